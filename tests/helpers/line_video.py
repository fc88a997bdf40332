"""A generated video (OpenCV's VideoWriter, MJPG in AVI) as the camera stand-in of the line tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, frames: int = 12, fps: float = 10.0, size=(40, 32)) -> list[np.ndarray]:
    """Frames of moving noise; returns them as OpenCV decodes them back (RGB), the reference for scores."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    generator = np.random.default_rng(7)
    for _ in range(frames):
        writer.write(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    capture, decoded = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(decoded) == frames
    return decoded
