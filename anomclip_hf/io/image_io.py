"""Reading images and masks from disk or memory into well-defined arrays.

Every loader in the package goes through these two functions, so odd files (16-bit, palette, CMYK,
alpha, truncated) are handled the same way everywhere and fail with an error that names the file. The
formats, limits and error rule themselves are the decoding contract of `decoding`.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from .decoding import (  # noqa: F401 - re-exported: the names callers have always imported from here
    MAX_IMAGE_PIXELS,
    ImageReadError,
    check_header,
    open_image,
    probe_image,
    to_rgb,
    to_rgb_checked,
)

PathOrImage = Union[str, os.PathLike, Image.Image]


def display_path(path) -> str:
    """A path as printable text whatever its bytes: undecodable bytes of a file name appear as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_pixel_count(size: tuple[int, int], name: str, what: str = "image", mode: str = "RGB") -> None:
    """ImageReadError naming the file when an image of `size` breaks the decoding limits (see `decoding`)."""
    check_header(size, mode, name, what)


def _open(source: PathOrImage, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        # Pixels the caller decoded already (trusted code): the same limits, so every image scored meets them.
        check_header(source.size, source.mode, "<in-memory image>", what)
        return ImageOps.exif_transpose(source)
    return open_image(source, display_path(source), what)


def load_image(source: PathOrImage) -> Image.Image:
    """An RGB PIL image from a path or a PIL image of any mode."""
    return to_rgb_checked(_open(source, "image"), _name(source))


def load_mask(source: PathOrImage) -> np.ndarray:
    """A binary uint8 (H, W) mask: any nonzero value (VisA uses 1/2/3, MVTec 255) becomes 1."""
    image = _open(source, "mask")
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.any(axis=2)
    if array.ndim != 2:
        raise ImageReadError(f"mask {_name(source)} has shape {array.shape}, expected (H, W)")
    return (array != 0).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary (H, W) mask to size = (width, height); it stays 0/1."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(tuple(size), Image.NEAREST)
    return (np.asarray(resized) > 127).astype(np.uint8)


def _name(source: PathOrImage) -> str:
    return "<in-memory image>" if isinstance(source, Image.Image) else display_path(source)
