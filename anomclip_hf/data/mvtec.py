"""Loading MVTec-AD-style trees (also used for the converted `visa_pytorch` VisA tree).

Layout, for any category name (not only the 15 official ones):

    <root>/<category>/train/good/*.png                 normal training images
    <root>/<category>/test/good/*.png                  normal test images
    <root>/<category>/test/<defect>/*.png              anomalous test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   their masks (MVTec naming)
    <root>/<category>/ground_truth/<defect>/<stem>.png        ... or this (visa_pytorch naming)

Every anomalous image needs exactly one mask and every mask needs an image; anything else is a
DatasetLayoutError naming the file, because silently dropping a mask would skew pixel metrics.
"""

from __future__ import annotations

import os
from typing import Dict, List

from datasets import Dataset

from ..errors import DatasetLayoutError
from .files import check_row_files, list_images, list_subdirs, require_dir
from .schema import GOOD, build_dataset, check_split, make_row

MASK_SUFFIX = "_mask"


def list_mvtec_categories(root: str) -> List[str]:
    """Sorted names of the sub-folders of `root` that have a train/ or test/ folder."""
    root = require_dir(root, "dataset root")
    categories = [
        name
        for name in list_subdirs(root)
        if os.path.isdir(os.path.join(root, name, "train")) or os.path.isdir(os.path.join(root, name, "test"))
    ]
    if not categories:
        raise DatasetLayoutError(f"no category folders under {root} (expected <category>/train/good/ and <category>/test/)")
    return categories


def load_mvtec(root: str, category: str, split: str, *, check_files: bool = True) -> Dataset:
    """One split of one category of an MVTec-style tree; see the module docstring for the layout.

    check_files reads every file header so corrupt files and mask/image size mismatches fail here,
    with the file name, instead of deep inside a training or evaluation loop.
    """
    check_split(split)
    root = require_dir(root, "dataset root")
    category_dir = os.path.join(root, category)
    if not os.path.isdir(category_dir):
        known = ", ".join(list_subdirs(root)) or "none"
        raise DatasetLayoutError(f"category folder not found: {category_dir} (folders under {root}: {known})")
    if split == "train":
        rows = _train_rows(category_dir, category)
    else:
        rows = _test_rows(category_dir, category)
    if check_files:
        check_row_files(rows)
    return build_dataset(rows)


def _train_rows(category_dir: str, category: str) -> List[Dict]:
    good_dir = os.path.join(category_dir, "train", GOOD)
    paths = list_images(good_dir) if os.path.isdir(good_dir) else []
    if not paths:
        raise DatasetLayoutError(f"category folder {category_dir} has no normal training images (expected them in {good_dir})")
    return [make_row(path, category, GOOD) for path in paths]


def _test_rows(category_dir: str, category: str) -> List[Dict]:
    test_dir = os.path.join(category_dir, "test")
    truth_dir = os.path.join(category_dir, "ground_truth")
    defects = list_subdirs(test_dir) if os.path.isdir(test_dir) else []
    rows: List[Dict] = []
    for defect in defects:
        images = list_images(os.path.join(test_dir, defect))
        if defect == GOOD:
            rows += [make_row(path, category, GOOD) for path in images]
            continue
        masks = _index_masks(os.path.join(truth_dir, defect))
        for path in images:
            stem = os.path.splitext(os.path.basename(path))[0]
            mask = masks.pop(stem, None)
            if mask is None:
                expected = os.path.join(truth_dir, defect, stem + MASK_SUFFIX + ".png")
                raise DatasetLayoutError(f"no mask for anomalous image {path} (expected {expected})")
            rows.append(make_row(path, category, defect, mask))
        _reject_orphans(masks, os.path.join(test_dir, defect))
    # Masks of a defect with no test folder at all are orphans too.
    if os.path.isdir(truth_dir):
        for defect in list_subdirs(truth_dir):
            if defect != GOOD and defect not in defects:
                _reject_orphans(_index_masks(os.path.join(truth_dir, defect)), os.path.join(test_dir, defect))
    if not rows:
        raise DatasetLayoutError(f"category folder {category_dir} has no test images (expected them in {test_dir}/<defect>/)")
    return rows


def _index_masks(mask_dir: str) -> Dict[str, str]:
    """Mask paths keyed by the image stem they belong to ("000_mask.png" and "000.png" -> "000")."""
    index: Dict[str, str] = {}
    if not os.path.isdir(mask_dir):
        return index
    for path in list_images(mask_dir):
        stem = os.path.splitext(os.path.basename(path))[0]
        key = stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem
        if key in index:
            raise DatasetLayoutError(f"two masks for image {key!r}: {index[key]} and {path}")
        index[key] = path
    return index


def _reject_orphans(masks: Dict[str, str], image_dir: str) -> None:
    if masks:
        path = sorted(masks.values())[0]
        raise DatasetLayoutError(f"mask {path} has no matching image in {image_dir} ({len(masks)} unmatched mask(s))")
