"""Output-folder locks name host, process id and start time: a reused PID is not the owner, a live owner is
respected, a stale lock is taken over with a message, and a failed write leaves nothing behind."""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

import anomclip_hf.io.run_lock as run_lock
from anomclip_hf.io.atomic_io import write_json
from anomclip_hf.io.run_lock import LOCK_FILE, FolderInUseError, folder_lock, process_start_time

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times need /proc")


@pytest.fixture
def sleeper():
    """A live process that is not this one (its PID and start time are real)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _lock(folder, **owner) -> None:
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), **owner}) + "\n")


def _take(folder) -> list[str]:
    with folder_lock(str(folder), "test run") as lock:
        mine = json.loads(open(lock).read())
        assert mine["pid"] == os.getpid() and mine["started"] == process_start_time(os.getpid())
        assert mine["host"] == socket.gethostname()
        return sorted(os.listdir(folder))


def test_start_time_reads_field_22_of_proc_stat(sleeper):
    started = process_start_time(sleeper.pid)
    with open("/proc/stat") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    assert abs(boot + started / os.sysconf("SC_CLK_TCK") - time.time()) < 60  # it started just now
    assert process_start_time(1) < started


def test_a_lock_naming_pid_1_with_another_start_time_is_taken_over_with_a_message(tmp_path, caplog):
    _lock(tmp_path, pid=1, started=process_start_time(1) + 12345)  # PID 1 runs, but is not the lock's owner
    with caplog.at_level(logging.WARNING, logger="anomclip_hf.io.run_lock"):
        assert _take(tmp_path) == [LOCK_FILE]
    assert f"taking over the lock {tmp_path / LOCK_FILE} of process 1" in caplog.text
    assert os.listdir(tmp_path) == []


def test_a_reused_pid_of_a_live_process_is_not_the_owner(tmp_path, sleeper):
    _lock(tmp_path, pid=sleeper.pid, started=process_start_time(sleeper.pid) - 1)
    assert _take(tmp_path) == [LOCK_FILE]


def test_a_bare_pid_lock_written_before_its_process_started_is_stale(tmp_path, sleeper):
    (tmp_path / LOCK_FILE).write_text(f"{sleeper.pid}\n")  # an older lock: a PID alone
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / LOCK_FILE, (an_hour_ago, an_hour_ago))
    assert _take(tmp_path) == [LOCK_FILE]


def test_a_live_owner_is_respected_and_named(tmp_path, sleeper):
    _lock(tmp_path, pid=sleeper.pid, started=process_start_time(sleeper.pid))
    with pytest.raises(FolderInUseError, match=rf"in use by another test run \(process {sleeper.pid} on host "):
        _take(tmp_path)
    (tmp_path / LOCK_FILE).write_text(f"{sleeper.pid}\n")  # the older format, written after it started
    with pytest.raises(FolderInUseError, match=rf"process {sleeper.pid}"):
        _take(tmp_path)
    assert os.listdir(tmp_path) == [LOCK_FILE]  # the owner's lock, and nothing of ours


def test_another_hosts_lock_is_respected(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere-7", "pid": 1, "started": 1}))
    with pytest.raises(FolderInUseError, match="process 1 on host elsewhere-7"):
        _take(tmp_path)


def test_a_failed_lock_write_leaves_no_file_behind(tmp_path, monkeypatch):
    real_open = builtins.open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode or "x" in mode else handle

    monkeypatch.setattr(run_lock, "open", full_disk_open, raising=False)
    with pytest.raises(OSError, match="No space left"):
        _take(tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_failed_json_write_leaves_no_partial_file(tmp_path):
    with pytest.raises(TypeError):
        write_json(str(tmp_path / "plan.json"), {"inputs": {1, 2}})  # a set: not JSON
    assert os.listdir(tmp_path) == []
