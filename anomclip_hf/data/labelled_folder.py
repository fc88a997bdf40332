"""Labelled custom data as anomalib's Folder data set has it: a folder of normal images, a folder of
anomalous ones and, optionally, a folder of their masks (`anomclip evaluate --dataset folder --normal-dir
--abnormal-dir [--mask-dir] [--normal-test-dir]`).

    normal_dir       normal images (directly inside): the few-shot references are drawn from them
    abnormal_dir     anomalous test images, anywhere below (a sub-folder's name is the defect type)
    mask_dir         their masks, at the same relative path and stem ("a/001.png" <- "a/001.png" or
                     "a/001_mask.png"); every anomalous image needs one when the folder is given
    normal_test_dir  normal test images; without it, a fixed fifth of normal_dir (at least one image,
                     drawn with random.Random(0)) is held out as normal test images and never used as a shot

`LabelledFolder` is the normal folder's path (so it serves as `data_root` everywhere, and shot files are
recorded relative to it) carrying the other folders.
"""

from __future__ import annotations

import os
import random
from typing import Dict, List, Optional

from datasets import Dataset

from ..errors import DatasetLayoutError
from .files import check_row_files, list_images, require_dir, walk_images
from .mvtec import MASK_SUFFIX
from .schema import GOOD, build_dataset, check_split, make_row

HELD_OUT_FRACTION = 0.2  # anomalib's default normal_split_ratio


class LabelledFolder(str):
    """A str (the normal folder) with .abnormal_dir, .mask_dir, .normal_test_dir and .category."""

    def __new__(cls, normal_dir: str, abnormal_dir: str, mask_dir: Optional[str] = None,
                normal_test_dir: Optional[str] = None, category: Optional[str] = None):
        value = super().__new__(cls, os.fspath(normal_dir))
        value.abnormal_dir = os.fspath(abnormal_dir)
        value.mask_dir = None if mask_dir is None else os.fspath(mask_dir)
        value.normal_test_dir = None if normal_test_dir is None else os.fspath(normal_test_dir)
        value.category = category or os.path.basename(os.path.normpath(normal_dir))
        return value

    @property
    def has_masks(self) -> bool:
        return self.mask_dir is not None


def _normal_split(folder: LabelledFolder) -> Dict[str, List[str]]:
    """{"train": shot pool, "test": normal test images}."""
    normals = list_images(require_dir(folder, "normal image"))
    if not normals:
        raise DatasetLayoutError(f"no normal images in {folder}")
    if folder.normal_test_dir is not None:
        tests = list_images(require_dir(folder.normal_test_dir, "normal test image"))
        return {"train": normals, "test": tests}
    if len(normals) < 2:
        raise DatasetLayoutError(f"{folder} has {len(normals)} normal image: at least 2 are needed (one is held out "
                                 "as a normal test image), or give --normal-test-dir")
    order = list(normals)
    random.Random(0).shuffle(order)
    held_out = set(order[:max(1, round(HELD_OUT_FRACTION * len(normals)))])
    return {"train": [p for p in normals if p not in held_out], "test": sorted(held_out)}


def _mask_for(folder: LabelledFolder, image: str) -> str:
    relative = os.path.splitext(os.path.relpath(image, folder.abnormal_dir))[0]
    for candidate in (relative, relative + MASK_SUFFIX):
        for extension in (".png", ".bmp", ".tif", ".tiff", ".jpg"):
            path = os.path.join(folder.mask_dir, candidate + extension)
            if os.path.isfile(path):
                return path
    raise DatasetLayoutError(f"no mask for anomalous image {image} (expected "
                             f"{os.path.join(folder.mask_dir, relative)}.png or {relative + MASK_SUFFIX}.png)")


def abnormal_rows(folder: LabelledFolder) -> List[Dict]:
    """The rows of the anomalous images (a sub-folder's name is the defect type), with their masks when the
    folder has a mask folder. Images inside the normal folders are left out: a normal folder may lie in the
    abnormal one (MVTec's test/good in test/) and counts as normal only."""
    abnormal, _ = walk_images(require_dir(folder.abnormal_dir, "abnormal image"))
    for normal in (folder, folder.normal_test_dir):
        if normal is not None:
            inside = os.path.join(os.path.abspath(normal), "")
            abnormal = [path for path in abnormal if not os.path.abspath(path).startswith(inside)]
    if not abnormal:
        raise DatasetLayoutError(f"no anomalous images under {folder.abnormal_dir}")
    if folder.mask_dir is not None:
        require_dir(folder.mask_dir, "mask")
    rows = []
    for path in abnormal:
        parent = os.path.dirname(os.path.relpath(path, folder.abnormal_dir))
        defect = parent.replace(os.sep, "/") if parent else "anomalous"
        rows.append(make_row(path, folder.category, defect,
                             _mask_for(folder, path) if folder.mask_dir is not None else None))
    return rows


def load_labelled_folder(folder: LabelledFolder, split: str, *, check_files: bool = True) -> Dataset:
    """One split: "train" = the normal shot pool; "test" = held-out normals + every anomalous image."""
    check_split(split)
    normals = _normal_split(folder)
    rows = [make_row(path, folder.category, GOOD) for path in normals[split]]
    if split == "test":
        rows += abnormal_rows(folder)
    if check_files:
        check_row_files(rows)
    return build_dataset(rows)
