"""Write a folder, a JSON or a CSV file all at once: readers see the old one or the complete new one, never half."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
from typing import Iterable, Iterator, Sequence


@contextlib.contextmanager
def atomic_directory(target: str) -> Iterator[str]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on error it is deleted.

    Crash-safe: a kill at any point leaves `target` complete (old or new), or, where the platform cannot swap
    two folders in one step, a complete old copy that the next `atomic_directory` / `recover_directory` of
    `target` puts back. Leftovers of killed processes are removed then too.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    recover_directory(target)
    staging = tempfile.mkdtemp(prefix=os.path.basename(_leftover_prefix(target, "partial", os.getpid())), dir=parent)
    try:
        yield staging
        apply_umask(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def apply_umask(folder: str) -> None:
    """Give `folder` and what was written in it the modes the user's umask gives new files and folders
    (0o666 / 0o777 & ~umask): mkdtemp makes folders owner-only (0700), and some writers (safetensors) make
    files owner-only (0600), which a second user of a shared machine cannot read."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, folders, files in os.walk(folder):  # links are left alone (never followed out of the folder)
        for names, mode in ((folders, 0o777), (files, 0o666)):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, mode & ~mask)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else by setting and restoring."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_directory(staging: str, final: str) -> None:
    """Make the complete folder `staging` the folder `final` (same file system), never leaving `final` absent.

    Linux: one renameat2(RENAME_EXCHANGE) swaps the two folders, then the old one (now at `staging`) is
    deleted. Elsewhere: `final` is renamed to a backup beside it, `staging` to `final`, and the backup is
    deleted; a kill between those renames leaves the backup, which `recover_directory` restores.
    """
    if not os.path.lexists(final):
        os.rename(staging, final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)
        return
    backup = _leftover_prefix(final, "old", os.getpid()) + "backup"
    os.rename(final, backup)
    os.rename(staging, final)
    shutil.rmtree(backup, ignore_errors=True)


def recover_directory(final: str) -> None:
    """Undo what a killed `replace_directory` / `atomic_directory` of `final` left: put a backup back when
    `final` is missing, delete the staging and backup folders of processes that no longer run."""
    final = os.path.abspath(final)
    parent, name = os.path.dirname(final), os.path.basename(final)
    if not os.path.isdir(parent):
        return
    leftovers = []
    for entry in os.listdir(parent):
        match = _LEFTOVER.match(entry)
        if match and match.group("name") == name and not process_alive(int(match.group("pid"))):
            leftovers.append((match.group("kind"), os.path.join(parent, entry)))
    backups = sorted((path for kind, path in leftovers if kind == "old"), key=os.path.getmtime, reverse=True)
    if backups and not os.path.lexists(final):
        os.rename(backups[0], final)  # the last complete copy: it was `final` until the kill
        leftovers = [item for item in leftovers if item[1] != backups[0]]
    for _, path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


# Staging and backup folders beside a target: .NAME.partial-PID-XXXX / .NAME.old-PID-backup
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-")


def _leftover_prefix(target: str, kind: str, pid: int) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{kind}-{pid}-")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(first: str, second: str) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc before 2.28, or another libc
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):  # kernel or file system lacks it
        return False
    raise OSError(code, os.strerror(code), second)


def strict_json(value):
    """`value` with every NaN or infinite float replaced by None: what JSON can hold (a bare NaN token is not
    JSON; JavaScript's JSON.parse and other strict parsers reject the whole file)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
        return strict_json(value.item())
    return value


def write_json(path: str, payload) -> None:
    """Write a strict JSON file (`strict_json`: null for NaN and infinities) atomically (a temporary file beside
    it, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.partial-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(strict_json(payload), handle, indent=2, allow_nan=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_text(path: str, text: str) -> None:
    """Write a UTF-8 text file atomically (a temporary file beside it, then a rename)."""
    temporary = f"{path}.partial-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


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
