"""Write a folder or a JSON file all at once: readers see the old one or the complete new one, never half."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from typing import Iterable, Iterator, Sequence


@contextlib.contextmanager
def atomic_directory(target: str) -> Iterator[str]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on error it is deleted."""
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-", dir=parent)
    try:
        yield staging
        if os.path.exists(target):
            # Same file system, so both renames are atomic; the old copy goes only after the swap.
            retired = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rename(target, os.path.join(retired, "content"))
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: str, payload) -> None:
    """Write a JSON file atomically (a temporary file beside it, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.partial-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(temporary, path)


def write_csv(path: str, rows: Iterable[Sequence]) -> None:
    """Write a CSV file (UTF-8) atomically: readers see the previous file or the complete new one."""
    temporary = f"{path}.partial-{os.getpid()}"
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
