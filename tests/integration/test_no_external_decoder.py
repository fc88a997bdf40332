"""`anomclip predict` (a real subprocess) scores a folder holding PostScript named .png without ever running
Ghostscript or any other external program (stand-ins first on PATH would leave a marker), and each hostile file
beside it (a text-chunk bomb, a 100-megapixel strip, a 100-megapixel float TIFF, a BMP that makes Pillow raise
ValueError) is one errors.csv row while the good images are scored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image
from scale_setup import write_scale_workspace
from hostile_images import _float_tiff, _strip_png, _zTXt_bomb, allowed_seeds
from stand_ins import eps_bytes, install_stand_ins

REPO = Path(__file__).resolve().parents[2]


def _bmp_raising_value_error() -> bytes:
    """A BMP whose header was damaged so that Pillow raises ValueError (not OSError) while decoding it."""
    import io

    data = bytearray(allowed_seeds()["bmp"])
    data[30] = 1  # the compression field: RLE8 on a 24-bit image, "unknown raw mode" from Pillow's BMP plugin
    try:
        Image.open(io.BytesIO(bytes(data))).load()
    except ValueError:
        return bytes(data)
    except OSError:
        pass
    raise AssertionError("this header edit no longer makes Pillow raise ValueError")


def test_predict_scores_a_folder_with_an_eps_named_png_without_running_ghostscript(tmp_path, tiny_clip, monkeypatch):
    stand_in_programs = install_stand_ins(tmp_path / "stand-ins", monkeypatch)
    workspace = write_scale_workspace(tmp_path / "ws", tiny_clip)
    (workspace.images / "evil.png").write_bytes(eps_bytes())
    (workspace.images / "evil.eps").write_bytes(eps_bytes())
    hostile = {"bomb.png": _zTXt_bomb(), "strip.png": _strip_png(100_000_000),
               "float.tif": _float_tiff(10_000, 10_000), "fuzzed.bmp": _bmp_raising_value_error()}
    for name, data in hostile.items():
        (workspace.images / name).write_bytes(data)
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "anomclip_hf", "predict", "--base", str(workspace.base),
                           "--category", str(workspace.widget), "--images", str(workspace.images), "--output",
                           str(output), "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(stand_in_programs)) == []
    errors = (output / "errors.csv").read_text()
    assert "evil.png" in errors and "expected a PNG, JPEG, BMP, TIFF or WebP file" in errors
    for name in hostile:
        assert name in errors
    scored = (output / "scores.csv").read_text()
    assert all(path.name in scored for path in workspace.good)
