"""The decoding contract: the one place where image bytes from anywhere become pixels (torch-free).

Every path that decodes an image (files found by `predict`, the dataset loaders, Ray actors, accelerate shards,
`anomclip serve` request bodies, the web app's uploads) ends in `open_image` or `decode_bytes`, so one set of
rules holds for all of them:

- Only ALLOWED_FORMATS are identified (`formats=` of `Image.open`): formats that Pillow decodes in-process.
  EPS/PostScript (Pillow runs Ghostscript on them), PDF and every other format are refused before a plugin
  sees more than the first bytes, so no external program ever runs on an input.
- Limits checked from the header, before any pixel is decoded: at most MAX_IMAGE_PIXELS pixels, at most
  MAX_DECODED_BYTES bytes once decoded (pixels x bytes per pixel of the mode, and at least the 3 of the RGB
  copy made from it: a 32-bit float TIFF counts 4 bytes a pixel, 16-bit 2) and a long side at most
  MAX_ASPECT_RATIO times the short one (the model squeezes the whole image into a square: a 1-pixel strip
  carries no usable picture, and its overlay would be a 600,000-pixel-wide file).
- Truncated files fail (Pillow's ImageFile.LOAD_TRUNCATED_IMAGES is never set here); PNG text chunks stay
  under Pillow's caps (PngImagePlugin.MAX_TEXT_CHUNK per chunk, MAX_TEXT_MEMORY per image).
- Whatever a decoder raises (OSError, ValueError, struct.error, IndexError, EOFError, MemoryError,
  DecompressionBombError, ...) comes out as one ImageReadError naming the input.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

# Decoded in-process by Pillow itself (zlib, libjpeg, libtiff, libwebp): no format here runs a program.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
ALLOWED_NAMES = "PNG, JPEG, BMP, TIFF or WebP"
# Largest image decoded (width x height): 100 megapixels, e.g. 10000x10000, ~300 MB as RGB.
MAX_IMAGE_PIXELS = 100_000_000
# Largest decoded image in bytes: the 100-megapixel RGB image. A 100-megapixel float or RGBA image (400 MB,
# and more while it is converted) is refused; such an image fits with fewer pixels.
MAX_DECODED_BYTES = 3 * MAX_IMAGE_PIXELS
# Longest side / shortest side. Line-scan strips of 16384x1024 (16:1) pass; a 100,000,000x1 strip does not.
MAX_ASPECT_RATIO = 100
RGB_BYTES_PER_PIXEL = 3

EncodedBytes = Union[bytes, bytearray, memoryview]


def bytes_per_pixel(mode: str) -> int:
    """Bytes a decoded pixel of PIL `mode` takes: bands x bytes per band (float and 32-bit 4, 16-bit 2)."""
    try:
        described = ImageMode.getmode(mode)
    except KeyError:
        raise ImageReadError(f"unknown pixel mode {mode!r}") from None
    return len(described.bands) * np.dtype(described.typestr).itemsize


def check_header(size: tuple[int, int], mode: str, name: str, what: str = "image") -> None:
    """ImageReadError naming the input when an image of `size` (width, height) in `mode` breaks a limit of the
    contract (pixel count, decoded bytes, aspect ratio, empty); only header values are needed."""
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{what} {name} is empty ({width}x{height})")
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{what} file {name} is {width}x{height} pixels, more than the "
                             f"{MAX_IMAGE_PIXELS:,} this package decodes; shrink it first")
    decoded = pixels * max(bytes_per_pixel(mode), RGB_BYTES_PER_PIXEL)
    if decoded > MAX_DECODED_BYTES:
        raise ImageReadError(f"{what} file {name} is {width}x{height} pixels in mode {mode} "
                             f"({bytes_per_pixel(mode)} bytes a pixel): {decoded:,} bytes decoded, more than the "
                             f"{MAX_DECODED_BYTES:,} this package decodes; shrink it or save it as 8-bit first")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageReadError(f"{what} file {name} is {width}x{height} pixels: its long side is {ratio:,.0f} times "
                             f"its short side, at most {MAX_ASPECT_RATIO} is accepted (the model sees the whole "
                             "image as a square); crop it into tiles first")


def open_image(source: Union[str, os.PathLike, EncodedBytes], name: str, what: str = "image") -> Image.Image:
    """The decoded image of a file path or of encoded bytes, in its own mode, EXIF rotation applied.

    name: how the input is named in errors (a printable path, "<image bytes>", a request's file name).
    Refuses (ImageReadError naming `name`) formats outside ALLOWED_FORMATS, images over the limits (from the
    header, before decoding) and anything a decoder raises.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError(f"{what} {name}: no image data (expected the bytes of a {ALLOWED_NAMES} file)")
        stream, label = io.BytesIO(bytes(source)), f"{what} {name}"
    else:
        stream, label = os.fspath(source), f"{what} file {name}"
        if not os.path.isfile(stream):
            raise ImageReadError(f"{what} file not found: {name}")
    try:
        with Image.open(stream, formats=ALLOWED_FORMATS) as image:
            check_header(image.size, image.mode, name, what)  # header only: before any pixel
            image.load()  # decode now, so truncated files fail here, with their name
            # Cameras store portrait shots as landscape pixels plus an EXIF rotation: apply it, as viewers do.
            return ImageOps.exif_transpose(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read {label}: no image format this package reads; expected a "
                             f"{ALLOWED_NAMES} file (other formats are refused)") from None
    except Exception as error:  # any decoder failure is this input's, never the caller's crash
        raise ImageReadError(f"cannot read {label}: {type(error).__name__}: {error}") from error


def probe_image(path: Union[str, os.PathLike], name: str, what: str = "image") -> tuple[int, int]:
    """(width, height) from the header of an allowed file as it will be displayed (EXIF rotation applied),
    checked against the limits; no pixel is decoded."""
    try:
        with Image.open(os.fspath(path), formats=ALLOWED_FORMATS) as image:
            check_header(image.size, image.mode, name, what)
            return _oriented_size(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read {what} file {name}: no image format this package reads; expected a "
                             f"{ALLOWED_NAMES} file (other formats are refused)") from None
    except Exception as error:
        raise ImageReadError(f"cannot read {what} file {name}: {type(error).__name__}: {error}") from error


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped when the EXIF orientation rotates by 90 or 270 degrees."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block: Pillow ignores it when decoding too
        orientation = None
    return image.size[::-1] if orientation in _SWAPPING_ORIENTATIONS else image.size


def decode_bytes(data: EncodedBytes, name: str = "<image bytes>") -> Image.Image:
    """An RGB PIL image from encoded bytes (a request body, an upload, a Ray 'bytes' column)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageReadError(f"image {name}: expected encoded image bytes, got a {type(data).__name__}")
    return to_rgb_checked(open_image(data, name), name)


def to_rgb_checked(image: Image.Image, name: str) -> Image.Image:
    """`to_rgb`, with a failure of the conversion (an odd mode a decoder produced) as ImageReadError."""
    try:
        return to_rgb(image)
    except Exception as error:
        raise ImageReadError(f"cannot convert image {name} (mode {image.mode}) to RGB: {error}") from error


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
        array = np.array(image, dtype=np.float32)  # a writable copy; float32: 4 bytes a pixel while it is rescaled
        if mode == "F":
            peak = 1.0 if np.nanmax(array) <= 1.0 else 255.0
        elif mode == "I" and np.max(array) <= 255:
            peak = 255.0
        else:
            peak = 65535.0
        np.nan_to_num(array, copy=False, nan=0.0, posinf=peak, neginf=0.0)
        array *= 255.0 / peak
        array += 0.5
        grey = np.clip(array, 0, 255, out=array).astype(np.uint8)
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
