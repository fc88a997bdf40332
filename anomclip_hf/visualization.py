"""Anomaly maps as pictures, laid out like anomalib's visualiser (no matplotlib needed).

One panel per image, side by side:  image (+ ground-truth contour) | jet heat map blended on the image |
image with the predicted-defect contour; above them a label with the score and the decision.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .image_io import resize_mask
from .thresholds import decision

GROUND_TRUTH_COLOUR = (255, 255, 0)
PREDICTION_COLOUR = (255, 0, 0)
LINE_HEIGHT = 14  # pixels per label line (PIL's default font)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) uint8 colours of matplotlib's "jet" (blue - cyan - yellow - red)."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.clip(1.5 - np.abs(4.0 * x - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
    return (np.stack(channels, axis=-1) * 255.0).round().astype(np.uint8)


def colour_scale(anomaly_map: np.ndarray, pixel_threshold: Optional[float] = None,
                 vmax: Optional[float] = None) -> float:
    """The map value drawn in full red. With a pixel threshold it sits at the middle of the scale (as
    anomalib's normalisation puts it at 0.5), so normal images look blue whatever their own maximum;
    else `vmax`, else the map's own maximum."""
    if pixel_threshold is not None and pixel_threshold > 0:
        return 2.0 * float(pixel_threshold)
    if vmax is not None:
        return float(vmax)
    return max(float(np.max(anomaly_map)), 1e-12)


def mask_contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The boundary pixels (bool, same shape) of a 0/1 mask, `thickness` pixels wide, inside the mask."""
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        return np.zeros_like(mask)
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def _resized_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.shape[::-1] == size:
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.BILINEAR))


def _draw_contour(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = rgb.copy()
    out[mask_contour(mask, thickness=max(1, round(min(mask.shape) / 150)))] = colour
    return out


def decision_text(score: Optional[float], threshold: Optional[float]) -> str:
    """"score 0.4210 | ANOMALOUS (threshold 0.3000)" (or NORMAL), without the decision when no threshold is known."""
    if score is None:
        return ""
    if threshold is None:
        return f"score {score:.4f} | no threshold"
    return f"score {score:.4f} | {decision(score, threshold).upper()} (threshold {threshold:.4f})"


def anomaly_panel(image: Image.Image, anomaly_map: np.ndarray, *, score: Optional[float] = None,
                  threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                  ground_truth: Optional[np.ndarray] = None, vmax: Optional[float] = None, alpha: float = 0.4,
                  note: str = "") -> Image.Image:
    """The side-by-side picture of one scored image (see the module docstring), at the image's size.

    pixel_threshold: map values above it form the predicted defect (its contour is drawn in red);
    ground_truth: a 0/1 mask of any size (its contour is drawn in yellow on the first panel);
    note: extra label text, e.g. "pipeline check: random backbone".
    """
    rgb_image = image.convert("RGB")
    size = rgb_image.size
    rgb = np.asarray(rgb_image)
    values = _resized_map(anomaly_map, size)
    heat = jet(values / colour_scale(values, pixel_threshold, vmax))
    blended = ((1.0 - alpha) * rgb + alpha * heat).round().astype(np.uint8)
    first = rgb if ground_truth is None else _draw_contour(
        rgb, resize_mask((np.asarray(ground_truth) > 0).astype(np.uint8), size) > 0, GROUND_TRUTH_COLOUR)
    third = rgb if pixel_threshold is None else _draw_contour(rgb, values > pixel_threshold, PREDICTION_COLOUR)

    lines = [line for line in (decision_text(score, threshold), note) if line]
    label_height = label_band_height(len(lines))
    canvas = Image.new("RGB", (size[0] * 3, size[1] + label_height), (255, 255, 255))
    for column, panel in enumerate((first, blended, third)):
        canvas.paste(Image.fromarray(panel), (column * size[0], label_height))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for number, line in enumerate(lines):
        draw.text((4, 3 + number * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return canvas


def label_band_height(lines: int) -> int:
    """Height of the white label band above the panels (0 without label lines)."""
    return 0 if lines == 0 else lines * LINE_HEIGHT + 6
