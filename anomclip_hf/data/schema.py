"""The columns every loader produces, and building a `datasets.Dataset` from rows.

Columns
-------
image        datasets.Image(mode="RGB"): holds the file path; decoded lazily on access, as RGB.
mask         datasets.Image: the ground-truth mask path, None for normal images. Decoding gives the
             raw file (VisA masks hold 0/1/2/3, MVTec 0/255): binarise with `read_mask`.
mask_path    string: the same mask path (None for normal images), readable without decoding.
label        ClassLabel(["normal", "anomaly"]).
defect_type  string: "good" for normal images, else the defect folder name ("bad" for VisA).
category     string: the object category, e.g. "bottle".
path         string: the image file path, readable without decoding.

Decoding the `image` column is done by PIL inside `datasets`; for a truncated file its error may
not name the file. Loaders header-check files up front (check_files=True), and
`reading.read_image(row)` decodes through image_io, whose ImageReadError always names the file.
To read rows without decoding pixels, use `dataset.select_columns(["path", "mask_path", ...])`.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from datasets import ClassLabel, Dataset, Features, Image, Value
from ..errors import DatasetError

LABEL_NAMES = ["normal", "anomaly"]
NORMAL, ANOMALY = 0, 1
GOOD = "good"
SPLITS = ("train", "test")

FEATURES = Features(
    {
        "image": Image(mode="RGB"),
        "mask": Image(),
        "mask_path": Value("string"),
        "label": ClassLabel(names=LABEL_NAMES),
        "defect_type": Value("string"),
        "category": Value("string"),
        "path": Value("string"),
    }
)


def make_row(path: str, category: str, defect_type: str, mask_path: Optional[str] = None) -> Dict:
    """One dataset row; the label follows from the defect type ("good" means normal)."""
    return {
        "image": path,
        "mask": mask_path,
        "mask_path": mask_path,
        "label": NORMAL if defect_type == GOOD else ANOMALY,
        "defect_type": defect_type,
        "category": category,
        "path": path,
    }


def build_dataset(rows: List[Dict]) -> Dataset:
    """A Dataset with FEATURES from rows made by make_row, sorted by image path for a stable order."""
    rows = sorted(rows, key=lambda row: row["path"])
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return Dataset.from_dict(columns, features=FEATURES)


def check_split(split: str) -> str:
    """`split` itself, or ValueError if it is not "train" or "test"."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split
