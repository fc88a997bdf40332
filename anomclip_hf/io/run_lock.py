"""One run per output folder: a lock file created atomically, naming its owner by host, process id and the
process's start time.

A second run on the same folder is refused with a message naming the folder and the owner. A lock whose owner
is gone is taken over, with a message: on this host, gone means no process with that id, or a process with that
id that started at another time (the id was reused: after a reboot a lock's PID may be PID 1, or any other
program's). A lock of another host cannot be checked from here and is respected. The lock appears complete or
not at all (written beside it under a unique name, then hard-linked into place, which fails if the name exists,
like O_EXCL); nothing is left beside it when that fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
from typing import Iterator, Optional

from ..errors import BusyError
from .atomic_io import process_alive

LOCK_FILE = ".anomclip.lock"
logger = logging.getLogger(__name__)


class FolderInUseError(BusyError, OSError):
    """Another live process holds the lock of this output folder (an OSError: the CLI prints it in one line)."""


def process_start_time(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (Linux: field 22 of /proc/PID/stat); None where
    unknown (no such process, no /proc)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Field 2 (the command name, in parentheses) may hold spaces and ')': the fields after it follow the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def owner_record(pid: Optional[int] = None) -> dict:
    """The lock content for process `pid` (default: this one) on this host."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": process_start_time(pid)}


def read_owner(lock: str) -> Optional[dict]:
    """The owner recorded in `lock` ({"host", "pid", "started"}); a bare pid (older locks) gives host None. None
    when the file is unreadable or holds neither (then it counts as stale)."""
    try:
        with open(lock, encoding="utf-8") as handle:
            text = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return None
    if isinstance(owner, int) and not isinstance(owner, bool):
        return {"host": None, "pid": owner, "started": None}
    if isinstance(owner, dict) and isinstance(owner.get("pid"), int) and not isinstance(owner.get("pid"), bool):
        started = owner.get("started")
        return {"host": owner.get("host"), "pid": owner["pid"],
                "started": started if isinstance(started, int) and not isinstance(started, bool) else None}
    return None


def process_started_after(pid: int, moment: float) -> bool:
    """Whether process `pid` started after `moment` (seconds since the epoch); False where unknown."""
    ticks = process_start_time(pid)
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        rate = os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, AttributeError):
        return False
    return ticks is not None and boot + ticks / rate > moment + 1.0  # /proc's clock is coarse: 1 s of slack


def owner_alive(owner: dict, lock: str) -> bool:
    """Whether the process that wrote `lock` still runs: another host's always counts as alive (it cannot be
    checked from here); on this host, its pid must run and have started when the lock says (a lock without a
    start time: not after the lock was written)."""
    if owner["host"] not in (None, socket.gethostname()):
        return True
    if not process_alive(owner["pid"]):
        return False
    if owner["started"] is not None:
        return process_start_time(owner["pid"]) in (None, owner["started"])
    try:
        written = os.stat(lock).st_mtime
    except OSError:
        return True
    return not process_started_after(owner["pid"], written)


def describe_owner(owner: dict) -> str:
    where = f" on host {owner['host']}" if owner["host"] else ""
    return f"process {owner['pid']}{where}"


@contextlib.contextmanager
def folder_lock(folder: str, what: str = "run") -> Iterator[str]:
    """Hold `folder`/.anomclip.lock while the block runs (the folder must exist); yields the lock path."""
    lock = os.path.join(folder, LOCK_FILE)
    pending = f"{lock}.{os.getpid()}.{secrets.token_hex(4)}.pending"  # unique: no other process writes it
    try:
        with open(pending, "x", encoding="utf-8") as stream:
            stream.write(json.dumps(owner_record()) + "\n")
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                os.link(pending, lock)
                break
            except FileExistsError:
                owner = read_owner(lock)
                if owner is not None and owner_alive(owner, lock) and not _is_me(owner):
                    raise FolderInUseError(
                        f"output folder {folder} is in use by another {what} ({describe_owner(owner)}, lock file "
                        f"{lock}); wait for it to finish or choose another output folder (remove the lock file if "
                        "that run is over)") from None
                logger.warning("output folder %s: taking over the lock %s of %s, which no longer runs", folder,
                               lock, "an unreadable owner" if owner is None else describe_owner(owner))
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
        else:
            raise FolderInUseError(f"output folder {folder}: could not take the lock file {lock}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(pending)
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def _is_me(owner: dict) -> bool:
    mine = owner_record()
    return owner["pid"] == mine["pid"] and owner["host"] in (None, mine["host"]) and \
        owner["started"] in (None, mine["started"])
