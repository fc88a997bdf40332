"""Bounded reads of untrusted files: only a regular file inside a given root folder, at most `limit` bytes.

An adapter folder comes from the Hub or from anyone, so a file in it may be a link to /dev/zero (endless), a
FIFO (blocks forever), a link out of the folder (reads another file) or simply huge. `read_regular_file`
refuses each of these before reading a byte, and never reads more than limit + 1 bytes.
"""

from __future__ import annotations

import os
import stat
from ..errors import AdapterError

# Flags that refuse a link swapped in after the checks and keep a FIFO from blocking the open (absent on Windows).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def is_inside(path: str, root: str) -> bool:
    """Whether `path`, with every link resolved, lies inside `root` (also resolved)."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) == real_root


def read_regular_file(path: str, root: str, limit: int, what: str) -> bytes:
    """The bytes of `path` if it is a non-empty regular file of at most `limit` bytes whose resolved location
    is inside `root`; else ValueError starting with `what` (which names the file for the reader)."""
    real = os.path.realpath(path)
    if not is_inside(real, root):
        raise AdapterError(f"{what} is a link to {real}, outside {os.path.realpath(root)}; only files inside the "
                         "adapter folder are read")
    try:
        mode = os.stat(real).st_mode  # no open: stat never blocks on a FIFO or reads a device
    except FileNotFoundError:
        raise AdapterError(f"{what} does not exist (a dangling link?)") from None
    if not stat.S_ISREG(mode):
        raise AdapterError(f"{what} is {_kind(mode)}; expected a regular file")
    fd = os.open(real, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)  # the file actually opened, in case it was swapped after the checks
        if not stat.S_ISREG(info.st_mode):
            raise AdapterError(f"{what} is {_kind(info.st_mode)}; expected a regular file")
        if info.st_size == 0:
            raise AdapterError(f"{what} is empty (0 bytes); save or download the adapter again")
        if info.st_size > limit:
            raise AdapterError(f"{what} has {info.st_size} bytes; at most {limit} are expected for this base model")
        # One read of the whole file in the common case (no chunk copies); never more than limit + 1 bytes.
        want = info.st_size + 1
        chunks, total = [], 0
        while total < want:
            chunk = os.read(fd, want - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total != info.st_size:
        raise AdapterError(f"{what} changed size while it was read ({info.st_size} bytes, then {total})")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
