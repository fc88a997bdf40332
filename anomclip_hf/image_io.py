"""Reading images and masks from disk or memory into well-defined arrays.

Every loader in the package goes through these two functions, so odd files (16-bit, palette, CMYK,
alpha, truncated) are handled the same way everywhere and fail with an error that names the file.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

PathOrImage = Union[str, os.PathLike, Image.Image]


class ImageReadError(ValueError):
    """An image or mask file could not be read or has an unusable content."""


def _open(source: PathOrImage, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ImageReadError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # force decoding now so truncated files fail here, with the path
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageReadError(f"cannot read {what} file {path}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping or losing the visible content.

    - 16/32-bit integer and float grey images are rescaled to 0..255 (PIL's own convert clips them);
    - alpha (RGBA, LA, P with transparency) is composited onto black, the usual background of
      transparent pixels, instead of exposing whatever colour hides under alpha 0;
    - CMYK, YCbCr, L, 1 and P go through PIL's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            peak = 1.0 if np.nanmax(array) <= 1.0 else 255.0
        elif mode == "I" and np.max(array) <= 255:
            peak = 255.0
        else:
            peak = 65535.0
        grey = np.clip(np.nan_to_num(array) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: PathOrImage) -> Image.Image:
    """An RGB PIL image from a path or a PIL image of any mode."""
    image = _open(source, "image")
    if image.width == 0 or image.height == 0:
        raise ImageReadError(f"image {_name(source)} is empty ({image.width}x{image.height})")
    return to_rgb(image)


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
    return "<in-memory image>" if isinstance(source, Image.Image) else os.fspath(source)
