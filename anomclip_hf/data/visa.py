"""Loading VisA in either of its two common layouts, detected automatically.

raw      the archive as published: `<root>/split_csv/1cls.csv` with columns
         object,split,label,image,mask (label "normal"/"anomaly", paths relative to <root>), e.g.
         `candle/Data/Images/Normal/0000.JPG` and `candle/Data/Masks/Anomaly/000.png`.
         The CSV is the authority for splits; masks hold region indices 0/1/2/3..., which
         `read_mask` binarises.
pytorch  the converted `visa_pytorch` tree: the MVTec layout with `test/good`, `test/bad` and
         masks `ground_truth/bad/<stem>.png` (no `_mask` suffix); loaded by the MVTec loader.

VisA has no per-image defect names in 1cls.csv, so anomalous images get defect_type "bad" in both
layouts, matching the visa_pytorch folder name.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

from datasets import Dataset

from ..errors import DatasetError, DatasetLayoutError
from .files import check_row_files, list_subdirs, require_dir
from .mvtec import list_mvtec_categories, load_mvtec
from .schema import GOOD, build_dataset, check_split, make_row

RAW, PYTORCH = "raw", "pytorch"
LAYOUTS = (RAW, PYTORCH)
SPLIT_CSV = os.path.join("split_csv", "1cls.csv")
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_DEFECT = "bad"


def detect_visa_layout(root: str) -> str:
    """"raw" if `root` has split_csv/1cls.csv, "pytorch" if it has <category>/train|test folders."""
    root = require_dir(root, "dataset root")
    if os.path.isfile(os.path.join(root, SPLIT_CSV)):
        return RAW
    for name in list_subdirs(root):
        if os.path.isdir(os.path.join(root, name, "train")) or os.path.isdir(os.path.join(root, name, "test")):
            return PYTORCH
    raise DatasetLayoutError(
        f"{root} is not a VisA tree: expected {os.path.join(root, SPLIT_CSV)} (raw layout) "
        f"or <category>/train/good and <category>/test folders (visa_pytorch layout)"
    )


def list_visa_categories(root: str, layout: Optional[str] = None) -> List[str]:
    """Sorted category names, from the CSV (raw layout) or the category folders (pytorch layout)."""
    layout = _resolve_layout(root, layout)
    if layout == PYTORCH:
        return list_mvtec_categories(root)
    return sorted({row["object"] for row in _read_split_csv(root)})


def load_visa(
    root: str, category: str, split: str, *, layout: Optional[str] = None, check_files: bool = True
) -> Dataset:
    """One split of one VisA category; `layout` is detected when None (see the module docstring)."""
    check_split(split)
    layout = _resolve_layout(root, layout)
    if layout == PYTORCH:
        return load_mvtec(root, category, split, check_files=check_files)
    csv_path = os.path.join(root, SPLIT_CSV)
    entries = _read_split_csv(root)
    known = sorted({row["object"] for row in entries})
    if category not in known:
        raise DatasetLayoutError(f"category {category!r} not in {csv_path} (categories: {', '.join(known)})")
    rows = [_make_raw_row(root, csv_path, entry) for entry in entries if entry["object"] == category and entry["split"] == split]
    if split == "train" and not any(row["defect_type"] == GOOD for row in rows):
        raise DatasetLayoutError(f"no normal training images for category {category!r} in {csv_path}")
    if not rows:
        raise DatasetLayoutError(f"no {split} images for category {category!r} in {csv_path}")
    if check_files:
        check_row_files(rows)
    return build_dataset(rows)


def _resolve_layout(root: str, layout: Optional[str]) -> str:
    if layout is None:
        return detect_visa_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown VisA layout {layout!r}; expected one of {list(LAYOUTS)}")
    return layout


def _read_split_csv(root: str) -> List[Dict[str, str]]:
    """The CSV rows with whitespace stripped and a "line" entry for error messages."""
    csv_path = os.path.join(require_dir(root, "dataset root"), SPLIT_CSV)
    if not os.path.isfile(csv_path):
        raise DatasetLayoutError(f"VisA split file not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in CSV_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise DatasetLayoutError(f"{csv_path} lacks column(s) {missing}; expected {list(CSV_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            entry = {name: (row[name] or "").strip() for name in CSV_COLUMNS}
            entry["line"] = str(line)
            rows.append(entry)
    return rows


def _make_raw_row(root: str, csv_path: str, entry: Dict[str, str]) -> Dict:
    where = f"{csv_path} line {entry['line']}"
    image = os.path.normpath(os.path.join(root, entry["image"]))
    if not os.path.isfile(image):
        raise DatasetLayoutError(f"image file not found: {image} ({where})")
    if entry["label"] == "normal":
        return make_row(image, entry["object"], GOOD)
    if entry["label"] != "anomaly":
        raise DatasetLayoutError(f"label {entry['label']!r} is neither 'normal' nor 'anomaly' ({where})")
    if not entry["mask"]:
        raise DatasetLayoutError(f"no mask for anomalous image {image} ({where})")
    mask = os.path.normpath(os.path.join(root, entry["mask"]))
    if not os.path.isfile(mask):
        raise DatasetLayoutError(f"mask file not found: {mask} for image {image} ({where})")
    return make_row(image, entry["object"], VISA_DEFECT, mask)
