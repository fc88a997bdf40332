"""Loading a plain folder of normal images, for custom data without labels or masks.

All images directly inside the folder (not in sub-folders) become rows with label "normal",
defect_type "good" and no mask. The folder has no train/test split: both splits list the same
images, so the folder can serve as few-shot references or as images to score.
"""

from __future__ import annotations

import os
from typing import List, Optional

from datasets import Dataset

from ..errors import DatasetLayoutError
from .files import (
    IMAGE_EXTENSIONS,
    check_row_files,
    list_images,
    list_subdirs,
    require_dir,
)
from .schema import GOOD, build_dataset, check_split, make_row


def list_folder_categories(root: str) -> List[str]:
    """[name of root] if root holds images itself, else its sub-folders that hold images."""
    root = require_dir(root, "image")
    if list_images(root):
        return [os.path.basename(os.path.normpath(root))]
    categories = [name for name in list_subdirs(root) if list_images(os.path.join(root, name))]
    if not categories:
        raise DatasetLayoutError(f"no images in {root} or its sub-folders")
    return categories


def load_folder(folder: str, category: Optional[str] = None, split: str = "train", *, check_files: bool = True) -> Dataset:
    """Every image in `folder` as a normal row; category defaults to the folder's name."""
    check_split(split)
    folder = require_dir(folder, "image")
    category = category or os.path.basename(os.path.normpath(folder))
    paths = list_images(folder)
    if not paths:
        raise DatasetLayoutError(f"no normal images in folder {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    rows = [make_row(path, category, GOOD) for path in paths]
    if check_files:
        check_row_files(rows)
    return build_dataset(rows)
