"""Reading images and masks from disk or memory into well-defined arrays.

Every loader in the package goes through these two functions, so odd files (16-bit, palette, CMYK,
alpha, truncated) are handled the same way everywhere and fail with an error that names the file.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

PathOrImage = Union[str, os.PathLike, Image.Image]
# Largest image decoded (width x height): 100 megapixels, e.g. 10000x10000, ~300 MB as RGB. Checked from
# the header before any pixel is decoded, so a small "decompression bomb" file fails at once, with its name.
MAX_IMAGE_PIXELS = 100_000_000
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def display_path(path) -> str:
    """A path as printable text whatever its bytes: undecodable bytes of a file name appear as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_pixel_count(size: tuple[int, int], name: str, what: str = "image") -> None:
    """ImageReadError naming the file when width x height exceeds MAX_IMAGE_PIXELS."""
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{what} file {name} is {size[0]}x{size[1]} pixels, more than the "
                             f"{MAX_IMAGE_PIXELS:,} this package decodes; shrink it first")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped when the EXIF orientation rotates by 90 or 270 degrees."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block: Pillow ignores it when decoding too
        orientation = None
    return image.size[::-1] if orientation in _SWAPPING_ORIENTATIONS else image.size


def _open(source: PathOrImage, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ImageReadError(f"{what} file not found: {display_path(path)}")
    try:
        with Image.open(path) as image:
            check_pixel_count(image.size, display_path(path), what)  # header only: before any pixel
            image.load()  # force decoding now so truncated files fail here, with the path
            # Cameras store portrait shots as landscape pixels plus an EXIF rotation: apply it, as viewers do.
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read {what} file {display_path(path)}: {error}") from error


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
    return "<in-memory image>" if isinstance(source, Image.Image) else display_path(source)
