"""The single entry point: `load_split(dataset, root, category, split)` for every supported dataset.

dataset   "mvtec"  MVTec-AD-style tree (any category names)           -> mvtec.load_mvtec
          "visa"   VisA, raw CSV or visa_pytorch layout (auto-detected) -> visa.load_visa
          "folder" a plain folder of normal images                      -> folder.load_folder
For "folder", `root/category` is used when that sub-folder exists, otherwise `root` itself
(with `category`, or the folder name, as the category). A `LabelledFolder` root (normal, abnormal and mask
folders, as anomalib's Folder data set) gives labelled test splits: labelled_folder.load_labelled_folder.
"""

from __future__ import annotations

import os
from typing import List, Optional

from datasets import Dataset

from .folder import list_folder_categories, load_folder
from .labelled_folder import LabelledFolder, load_labelled_folder
from .mvtec import list_mvtec_categories, load_mvtec
from .visa import list_visa_categories, load_visa
from ..errors import DatasetError

DATASETS = ("mvtec", "visa", "folder")


def _dataset_name(dataset: str) -> str:
    name = str(dataset).lower()
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return name


def list_categories(dataset: str, root: str) -> List[str]:
    """Sorted category names found under `root` for the given dataset kind."""
    name = _dataset_name(dataset)
    if isinstance(root, LabelledFolder):
        return [root.category]
    if name == "mvtec":
        return list_mvtec_categories(root)
    if name == "visa":
        return list_visa_categories(root)
    return list_folder_categories(root)


def load_split(dataset: str, root: str, category: Optional[str], split: str, *, check_files: bool = True) -> Dataset:
    """One split ("train" or "test") of one category as a datasets.Dataset (columns: see schema)."""
    name = _dataset_name(dataset)
    if isinstance(root, LabelledFolder):
        return load_labelled_folder(root, split, check_files=check_files)
    root = os.fspath(root)
    if name == "folder":
        sub = os.path.join(root, category) if category else None
        folder = sub if sub and os.path.isdir(sub) else root
        return load_folder(folder, category, split, check_files=check_files)
    if not category:
        raise DatasetError(f"dataset {name!r} needs a category; list them with list_categories({name!r}, root)")
    if name == "mvtec":
        return load_mvtec(root, category, split, check_files=check_files)
    return load_visa(root, category, split, check_files=check_files)
