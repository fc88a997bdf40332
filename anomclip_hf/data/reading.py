"""Reading the image and the *binary* mask of a dataset row, through anomclip_hf.io.image_io.

The `mask` column decodes to the raw file (VisA: 0/1/2/3, MVTec: 0/255); use `read_mask` to get
the 0/1 array metrics expect. A normal row (no mask) gives an all-zero mask.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image

from ..io.image_io import load_image, load_mask, resize_mask
from .files import probe_size

RowOrPath = Union[Mapping, str, os.PathLike]


def read_image(row_or_path: RowOrPath) -> Image.Image:
    """The RGB image of a dataset row (its `path`) or of a file path."""
    path = row_or_path["path"] if isinstance(row_or_path, Mapping) else row_or_path
    return load_image(path)


def read_mask(row_or_path: RowOrPath, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A binary uint8 (H, W) mask of a row or mask file; zeros for a row without a mask.

    size is (width, height), PIL's order; the mask is resized with nearest-neighbour so it stays binary.
    """
    if isinstance(row_or_path, Mapping):
        mask_path = row_or_path["mask_path"]
        if mask_path is None:
            width, height = size or probe_size(row_or_path["path"], "image")
            return np.zeros((height, width), dtype=np.uint8)
    else:
        mask_path = row_or_path
    mask = load_mask(mask_path)
    return mask if size is None else resize_mask(mask, size)
