"""The README's offline walkthrough runs as written (each line, from a copy of the repository layout)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _walkthrough_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- walkthrough:start.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its walkthrough block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_walkthrough_runs(tmp_path):
    (tmp_path / "training").symlink_to(ROOT / "training")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    lines = _walkthrough_lines()
    assert lines[0].startswith("anomclip demo")
    for line in lines:
        result = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        last = result.stdout
    assert last.split() == ["1.0", "1.0"]  # the metrics one-liner: perfect map and perfect scores
    for produced in ("anomclip_demo/overlays", "anomclip_demo/base/config.json",
                     "runs/train/mvtec/widget/2shot/seed0/adapter/adapter_model.safetensors",
                     "runs/fit/adapter/category.json", "runs/predict/scores.csv", "runs/eval/results.md"):
        assert (tmp_path / produced).exists(), produced
