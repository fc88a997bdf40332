"""Anomaly maps as pictures: a colour map (no matplotlib needed) blended over the input image."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Anchor colours of a perceptually ordered map (black-purple-red-yellow-white, like "inferno").
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """(H, W) scores -> (H, W, 3) uint8 colours; vmax defaults to the map's own maximum."""
    vmax = float(np.max(values)) if vmax is None else vmax
    scaled = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(_ANCHORS) - 2)
    weight = (scaled - low)[..., None]
    return ((1 - weight) * _ANCHORS[low] + weight * _ANCHORS[low + 1]).round().astype(np.uint8)


def anomaly_overlay(image: Image.Image, anomaly_map: np.ndarray, vmax: float | None = None,
                    alpha: float = 0.5) -> Image.Image:
    """Side by side: the image, and the image blended with the coloured map (map resized to the image)."""
    rgb = image.convert("RGB")
    heat = Image.fromarray(colorize(np.asarray(anomaly_map, dtype=np.float64), vmax=vmax)).resize(rgb.size,
                                                                                                   Image.BILINEAR)
    blended = Image.blend(rgb, heat, alpha)
    canvas = Image.new("RGB", (rgb.width * 2, rgb.height))
    canvas.paste(rgb, (0, 0))
    canvas.paste(blended, (rgb.width, 0))
    return canvas
