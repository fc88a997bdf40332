"""Stand-ins for the external programs an image decoder could run (Ghostscript for EPS, ImageMagick, ffmpeg
...): executables first on PATH that write a marker file when run, so a test sees whether any ever ran."""

from __future__ import annotations

import os
import stat
from pathlib import Path

EXTERNAL_PROGRAMS = ("gs", "gsc", "gswin32c", "gswin64c", "convert", "magick", "identify", "ffmpeg", "djpeg",
                     "cjpeg", "xdg-open", "display", "eog", "xv")


def install_stand_ins(folder: Path, monkeypatch) -> Path:
    """Write the stand-ins into folder/bin, put it first on PATH; returns the folder their markers appear in."""
    programs, markers = folder / "bin", folder / "markers"
    programs.mkdir(parents=True)
    markers.mkdir()
    for program in EXTERNAL_PROGRAMS:
        script = programs / program
        script.write_text(f"#!/bin/sh\necho \"$@\" > {markers}/{program}\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{programs}{os.pathsep}{os.environ['PATH']}")
    return markers


def eps_bytes() -> bytes:
    """A PostScript file Pillow identifies as EPS: decoding it runs Ghostscript (`gs`)."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
            b"newpath 0 0 moveto 32 32 lineto stroke showpage\n%%EOF\n")
