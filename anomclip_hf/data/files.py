"""Finding image files in folders and checking them cheaply.

Loaders list files here so every dataset accepts the same extensions (case-insensitive) and
ignores the same clutter (hidden files, Thumbs.db, text files).
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from ..errors import DatasetLayoutError
from ..io.image_io import ImageReadError, check_pixel_count, display_path, oriented_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(name: str) -> bool:
    """True for a visible file name with one of IMAGE_EXTENSIONS, in any letter case."""
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def require_dir(folder: str, what: str) -> str:
    """`folder` as a string, or DatasetLayoutError naming it if it is not a directory."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DatasetLayoutError(f"{what} folder not found: {folder}")
    return folder


def list_images(folder: str) -> List[str]:
    """Full paths of the image files directly inside `folder`, sorted by name (not recursive)."""
    names = sorted(name for name in os.listdir(folder) if is_image_file(name))
    return [os.path.join(folder, name) for name in names if os.path.isfile(os.path.join(folder, name))]


def walk_images(folder: str, unlistable: Optional[List[Tuple[str, str]]] = None,
                exclude: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(image files, other visible files) anywhere under `folder`, each sorted by path.

    Hidden files and folders are skipped; the other files are returned so callers can report them.
    unlistable: gets (folder, why) of each sub-folder that cannot be listed (default: DatasetLayoutError).
    exclude: a folder never entered (an output folder inside the input folder).
    """
    folder = require_dir(folder, "image")
    images, others = [], []
    excluded = os.path.realpath(exclude) if exclude else None

    def refused(error: OSError) -> None:
        why = f"cannot list folder: {error.strerror or error}"
        if unlistable is None:
            raise DatasetLayoutError(f"{why}: {display_path(error.filename)}")
        unlistable.append((error.filename, why))

    for root, dirs, names in os.walk(folder, onerror=refused):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) != excluded)
        for name in names:
            if name.startswith("."):
                continue
            (images if is_image_file(name) else others).append(os.path.join(root, name))
    return sorted(images), sorted(others)


def list_subdirs(folder: str) -> List[str]:
    """Names of the visible sub-folders of `folder`, sorted."""
    return sorted(
        name for name in os.listdir(folder) if not name.startswith(".") and os.path.isdir(os.path.join(folder, name))
    )


def probe_size(path: str, what: str = "image") -> Tuple[int, int]:
    """(width, height) from the file header, or ImageReadError naming the file.

    Only the header is read (not the pixels), so a whole MVTec category is checked in well under a
    second; full decoding, and errors for truncated pixel data, happen later in image_io.load_image.
    """
    try:
        with Image.open(path) as image:
            check_pixel_count(image.size, display_path(path), what)
            return oriented_size(image)  # the size load_image returns, after the EXIF rotation
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read {what} file {display_path(path)}: {error}") from error


def check_row_files(rows: Iterable[Dict]) -> None:
    """Header-check every image and mask of dataset rows; a mask must have its image's size."""
    for row in rows:
        size = probe_size(row["path"], "image")
        if row["mask_path"] is not None:
            mask_size = probe_size(row["mask_path"], "mask")
            if mask_size != size:
                raise DatasetLayoutError(
                    f"mask {row['mask_path']} is {mask_size[0]}x{mask_size[1]} "
                    f"but image {row['path']} is {size[0]}x{size[1]}"
                )
