"""Uploaded files, copied into one folder of the session under unique names.

Limits: at most `max_files` per upload, each at most `max_bytes`. Files are never fatal one by one (the
rules of `anomclip predict`): a name without an image extension, or a file over the size limit, is
rejected with the reason; decoding errors are found where the images are read (and reported the same way).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Sequence

from ..data.files import is_image_file
from ..inference.writers import NOT_AN_IMAGE
from ..errors import ArgumentError

MAX_FILES = 200
MAX_FILE_MB = 20


@dataclass
class StagedFiles:
    images: list[str] = field(default_factory=list)  # copies inside the folder, in upload order
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)


def unique_path(folder: str, name: str) -> str:
    """folder/name, or folder/stem-2.ext, -3 ... when a file of that stem is there already (two uploads may
    share a name, and a.png and a.jpg would share an overlay name)."""
    taken = {os.path.splitext(existing)[0].lower() for existing in os.listdir(folder)}
    stem, extension = os.path.splitext(name)
    candidate, number = stem, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{stem}-{number}"
    return os.path.join(folder, candidate + extension)


def stage_files(sources: Sequence[str], folder: str, *, max_files: int = MAX_FILES,
                max_file_mb: float = MAX_FILE_MB) -> StagedFiles:
    """Copy the image files among `sources` into `folder`; ValueError when there are more than `max_files`."""
    sources = [os.fspath(source) for source in sources or []]
    if len(sources) > max_files:
        raise ArgumentError(f"{len(sources)} files given; at most {max_files} at once")
    os.makedirs(folder, exist_ok=True)
    staged = StagedFiles()
    for source in sources:
        name = os.path.basename(source)
        if not is_image_file(name):
            staged.rejected.append((name, NOT_AN_IMAGE))
            continue
        size_mb = os.path.getsize(source) / 2 ** 20
        if size_mb > max_file_mb:
            staged.rejected.append((name, f"{size_mb:.1f} MB, over the {max_file_mb:g} MB limit; skipped"))
            continue
        target = unique_path(folder, name)
        shutil.copyfile(source, target)
        staged.images.append(target)
    return staged


def folder_sources(folder: str) -> list[str]:
    """Every visible file directly inside a server-side folder (images and others, so the others are reported)."""
    folder = os.path.expanduser(folder.strip())
    if not os.path.isdir(folder):
        raise ArgumentError(f"folder not found on the server: {folder}")
    names = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    return [os.path.join(folder, name) for name in names if os.path.isfile(os.path.join(folder, name))]
