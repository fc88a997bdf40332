"""What a prediction run reads: the image files under the given folders (`find_inputs`), the folder the
overlays mirror (`input_root`), and each input decoded to an RGB PIL image (`decode`), whatever its kind
(path, PIL image, uint8 array, encoded bytes). Torch-free.

`decode` is the isolation boundary of an input: whatever goes wrong while reading one (a truncated file, bytes
of another format than the name says, a decoder bug that raises something else than ImageReadError) comes back
as an ImageReadError naming that input, so a run can record it and go on.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..data.files import IMAGE_EXTENSIONS, is_image_file, walk_images
from ..io.decoding import decode_bytes
from ..io.image_io import ImageReadError, display_path, load_image
from ..io.pixel_arrays import as_pil
from ..errors import ArgumentError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]
BYTES_NAME = "<image bytes>"
IMAGE_NAME = "<in-memory image>"


def source_name(item) -> str:
    """The input as text for tables and messages: its path, or "<image bytes>" / "<in-memory image>"."""
    if isinstance(item, (str, os.PathLike)):
        return display_path(item)
    return BYTES_NAME if isinstance(item, (bytes, bytearray, memoryview)) else IMAGE_NAME


def image_from_bytes(data: bytes, name: str = BYTES_NAME) -> Image.Image:
    """An RGB PIL image from encoded bytes, under the decoding contract (`io.decoding`: allowed formats, limits
    from the header); ImageReadError naming `name` otherwise."""
    return decode_bytes(data, name)


def decode(item: ImageLike) -> Image.Image:
    """An RGB PIL image of any accepted input; ImageReadError (a ValueError) naming it otherwise, whatever the
    decoder raised."""
    try:
        if isinstance(item, (bytes, bytearray, memoryview)):
            return image_from_bytes(item)
        if isinstance(item, np.ndarray):
            try:
                return load_image(as_pil(item))
            except (ValueError, TypeError) as error:
                raise ImageReadError(f"array of shape {item.shape} ({item.dtype}): {error}") from error
        if isinstance(item, (str, os.PathLike, Image.Image)):
            return load_image(item)
        raise ImageReadError(f"cannot score a {type(item).__name__}; expected a path, a PIL image, a uint8 "
                             "(H, W[, C]) array or encoded image bytes")
    except ImageReadError:
        raise
    except (MemoryError, Exception) as error:  # noqa: BLE001 - a decoder's own bug fails this input only
        raise ImageReadError(f"cannot read image {source_name(item)}: {type(error).__name__}: {error}") from error


def find_inputs(inputs: Union[str, Sequence[str]], flag: str = "--images", exclude: Optional[str] = None
                ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(image files, other files, (unlistable folder, why)) of folders (recursive, never entering `exclude`, the
    output folder) and single image files; ValueError naming `flag` and the path when one does not exist, a
    named file is not an image, or there is no image at all."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    extensions = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    images, others, unlistable = [], [], []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found, other = walk_images(item, unlistable=unlistable, exclude=exclude)
            images += found
            others += other
        elif os.path.isfile(item):
            if not is_image_file(item):
                raise ArgumentError(f"{flag} {display_path(item)}: not an image file (expected {extensions})")
            images.append(item)
        else:
            raise ArgumentError(f"{flag} {display_path(item)}: no such file or folder")
    images, others = list(dict.fromkeys(images)), list(dict.fromkeys(others))  # a file named twice: once
    if not images:
        found = (f" (only other files, e.g. {display_path(others[0])})" if others
                 else f" ({unlistable[0][1]}: {display_path(unlistable[0][0])})" if unlistable else " (it is empty)")
        raise ArgumentError(f"{flag}: no image files ({extensions}) under "
                         f"{', '.join(display_path(os.fspath(p)) for p in inputs)}{found}")
    return images, others, unlistable


def input_root(inputs: Union[str, Sequence[str]]) -> str:
    """The folder the overlays' sub-folders mirror: the folder given, or the common folder of several inputs."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    folders = [os.path.abspath(p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))) for p in inputs]
    return os.path.commonpath(folders)


def printable(path: str) -> bool:
    """False for a file name with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
