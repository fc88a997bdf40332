"""Folders and files written atomically get the modes the user's umask gives (readable by group and others
under 022, owner-only under 077), not mkdtemp's / safetensors' owner-only 0700 / 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
import numpy as np
from safetensors.numpy import save_file
from anomclip_hf.io.atomic_io import atomic_directory, write_json
target = sys.argv[1]
with atomic_directory(os.path.join(target, "adapter")) as staging:
    save_file({"x": np.zeros(2, np.float32)}, os.path.join(staging, "weights.safetensors"))
    os.makedirs(os.path.join(staging, "sub"))
    with open(os.path.join(staging, "sub", "a.json"), "w") as handle:
        handle.write("{}")
write_json(os.path.join(target, "loose.json"), {"a": 1})
"""


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                           (0o002, 0o775, 0o664)])
def test_written_modes_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    # a child process: the umask is process-wide, and pytest's own must stay as it is
    result = subprocess.run([sys.executable, "-c", f"import os; os.umask({umask}); exec({SCRIPT!r})", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    adapter = tmp_path / "adapter"

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(adapter) == folder_mode and mode(adapter / "sub") == folder_mode
    assert mode(adapter / "weights.safetensors") == file_mode
    assert mode(adapter / "sub" / "a.json") == file_mode
    assert mode(tmp_path / "loose.json") == file_mode
