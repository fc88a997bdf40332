"""Writing small MVTec- and VisA-shaped trees of synthetic images, for tests, demos and benchmarks.

Images come from synthetic_images.render_sample, identified by (category, image_id, seed) where
image_id is the file's path inside the category without extension ("test/blob/001" for MVTec,
"Anomaly/001" for VisA, in both VisA layouts). Same arguments -> byte-identical files; call
render_sample with the same id to get an image's defect-free version and exact mask.

Generated data belongs in a scratch directory (tmp_path, runs/, ...), never in the repository.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, List, Sequence

import numpy as np
from PIL import Image

from .synthetic_images import DEFECT_TYPES, render_sample, rng_for
from ..errors import ArgumentError

JPEG_QUALITY = 95
RAW, PYTORCH = "raw", "pytorch"


def generate_mvtec_tree(
    root: str,
    categories: Sequence[str] = ("widget", "gadget"),
    n_train: int = 10,
    n_test_good: int = 4,
    n_test_defect: int = 3,
    image_size: int = 96,
    seed: int = 0,
    defect_types: Sequence[str] = DEFECT_TYPES,
    exist_ok: bool = False,
) -> str:
    """An MVTec-AD tree: PNG images, test/<defect> for each defect type, 0/255 `<stem>_mask.png` masks."""
    root = os.fspath(root)
    _claim(root, categories, exist_ok)
    for category in categories:
        for index in range(n_train):
            _write_image(root, category, f"train/good/{index:03d}", ".png", image_size, seed)
        for index in range(n_test_good):
            _write_image(root, category, f"test/good/{index:03d}", ".png", image_size, seed)
        for defect in defect_types:
            for index in range(n_test_defect):
                mask = _write_image(root, category, f"test/{defect}/{index:03d}", ".png", image_size, seed, [defect])
                _save(root, category, f"ground_truth/{defect}/{index:03d}_mask.png", (mask > 0).astype(np.uint8) * 255)
    return root


def generate_visa_tree(
    root: str,
    categories: Sequence[str] = ("widget", "gadget"),
    n_train: int = 10,
    n_test_good: int = 4,
    n_test_anomaly: int = 6,
    image_size: int = 96,
    seed: int = 0,
    layout: str = RAW,
    max_regions: int = 3,
    exist_ok: bool = False,
) -> str:
    """A VisA tree with JPG images and 1..max_regions defects per anomalous image.

    layout "raw":     <cat>/Data/Images/{Normal,Anomaly}/*.JPG, masks <cat>/Data/Masks/Anomaly/*.png
                      holding region numbers 1, 2, 3 (like VisA), and split_csv/1cls.csv.
    layout "pytorch": the visa_pytorch conversion: <cat>/train/good, test/good, test/bad and
                      0/255 masks ground_truth/bad/<stem>.png.
    """
    if layout not in (RAW, PYTORCH):
        raise ArgumentError(f"unknown VisA layout {layout!r}; expected 'raw' or 'pytorch'")
    root = os.fspath(root)
    _claim(root, list(categories) + (["split_csv"] if layout == RAW else []), exist_ok)
    csv_rows: List[List[str]] = []
    for category in categories:
        for index in range(n_train + n_test_good):
            image_id = f"Normal/{index:04d}"
            split = "train" if index < n_train else "test"
            target = f"Data/Images/{image_id}" if layout == RAW else f"{split}/good/{index:04d}"
            _write_image(root, category, image_id, ".JPG", image_size, seed, target=target)
            csv_rows.append([category, split, "normal", f"{category}/{target}.JPG", ""])
        for index in range(n_test_anomaly):
            image_id = f"Anomaly/{index:03d}"
            plan = rng_for(seed, category, image_id, "plan")
            defects = [str(plan.choice(DEFECT_TYPES)) for _ in range(int(plan.integers(1, max_regions + 1)))]
            target = f"Data/Images/{image_id}" if layout == RAW else f"test/bad/{index:03d}"
            mask = _write_image(root, category, image_id, ".JPG", image_size, seed, defects, target=target)
            if layout == RAW:
                mask_file = f"Data/Masks/{image_id}.png"
                _save(root, category, mask_file, mask)  # region numbers 1, 2, 3 as in VisA
                csv_rows.append([category, "test", "anomaly", f"{category}/{target}.JPG", f"{category}/{mask_file}"])
            else:
                _save(root, category, f"ground_truth/bad/{index:03d}.png", (mask > 0).astype(np.uint8) * 255)
    if layout == RAW:
        os.makedirs(os.path.join(root, "split_csv"), exist_ok=True)
        with open(os.path.join(root, "split_csv", "1cls.csv"), "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["object", "split", "label", "image", "mask"])
            writer.writerows(csv_rows)
    return root


def _claim(root: str, names: Iterable[str], exist_ok: bool) -> None:
    """Refuse to write over earlier output, whose leftover files would change the image counts."""
    if not exist_ok:
        for name in names:
            if os.path.exists(os.path.join(root, name)):
                raise FileExistsError(f"{os.path.join(root, name)} already exists; use a new root or exist_ok=True")
    os.makedirs(root, exist_ok=True)


def _write_image(root, category, image_id, extension, size, seed, defects=(), target=None) -> np.ndarray:
    """Render and save one image (at `target`, default image_id); returns its region mask."""
    sample = render_sample(category, image_id, size, defects, seed)
    _save(root, category, (target or image_id) + extension, sample.image)
    return sample.mask


def _save(root: str, category: str, relative: str, array: np.ndarray) -> None:
    path = os.path.join(root, category, *relative.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if path.lower().endswith((".jpg", ".jpeg")):
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG")


def generate_highres_tree(
    root: str,
    categories: Sequence[str] = ("plate",),
    n_train: int = 4,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    image_size: int = 1024,
    defect_count: int = 2,
    defect_size: tuple = (4, 12),
    seed: int = 0,
    exist_ok: bool = False,
) -> str:
    """An MVTec-shaped tree of large images with small defects (`render_highres_sample`): train/good,
    test/good, test/small with `defect_count` defects of `defect_size` (smallest, largest) pixels each, and
    0/255 masks ground_truth/small/<stem>_mask.png. Images are PNG (no JPEG blur over the small defects)."""
    from .synthetic_images import render_highres_sample

    root = os.fspath(root)
    _claim(root, categories, exist_ok)
    for category in categories:
        for split, count in (("train/good", n_train), ("test/good", n_test_good)):
            for index in range(count):
                sample = render_highres_sample(category, f"{split}/{index:03d}", image_size, 0, defect_size, seed)
                _save(root, category, f"{split}/{index:03d}.png", sample.image)
        for index in range(n_test_defect):
            sample = render_highres_sample(category, f"test/small/{index:03d}", image_size, defect_count,
                                           defect_size, seed)
            _save(root, category, f"test/small/{index:03d}.png", sample.image)
            _save(root, category, f"ground_truth/small/{index:03d}_mask.png", (sample.mask > 0).astype(np.uint8) * 255)
    return root
