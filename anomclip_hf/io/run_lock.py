"""One run per output folder: a lock file created atomically, holding the owner's process id.

A second run on the same folder is refused with a message naming the folder and the owner; a lock left by a
process that no longer exists (killed, crashed machine) is taken over. The lock appears complete or not at
all (written beside it, then hard-linked into place, which fails if the name exists, like O_EXCL).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from ..errors import BusyError
from .atomic_io import process_alive

LOCK_FILE = ".anomclip.lock"


class FolderInUseError(BusyError, OSError):
    """Another live process holds the lock of this output folder (an OSError: the CLI prints it in one line)."""


def _owner(lock: str) -> Optional[int]:
    """The pid written in `lock`, or None when it is unreadable or not a number (then it counts as stale)."""
    try:
        with open(lock, encoding="ascii") as handle:
            return int(handle.read(32).strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def folder_lock(folder: str, what: str = "run") -> Iterator[str]:
    """Hold `folder`/.anomclip.lock while the block runs (the folder must exist); yields the lock path."""
    lock = os.path.join(folder, LOCK_FILE)
    pending = f"{lock}.{os.getpid()}"
    with open(pending, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    try:
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                os.link(pending, lock)
                break
            except FileExistsError:
                owner = _owner(lock)
                if owner is not None and owner != os.getpid() and process_alive(owner):
                    raise FolderInUseError(
                        f"output folder {folder} is in use by another {what} (process {owner}, lock file {lock}); "
                        "wait for it to finish or choose another output folder") from None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)  # its owner is gone
        else:
            raise FolderInUseError(f"output folder {folder}: could not take the lock file {lock}")
    finally:
        os.remove(pending)
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)
