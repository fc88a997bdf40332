"""Anomaly maps as pictures, laid out like anomalib's visualiser (no matplotlib needed).

One picture per image:
    header       score and decision (+ a note such as PIPELINE CHECK)
    titles       "image (+ true defect)" | "anomaly map" | "predicted defect" ("image" without a mask)
    panels       image with the ground-truth outline | jet heat map blended on the image | image with the
                 predicted-defect outline (map > pixel threshold)
    colour bar   the heat map's scale, with the pixel threshold marked

Text, outlines and the colour bar are sized to the panels; a large photo is scaled down so that the whole
picture's long side stays within `max_side` (default 1536 px).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.image_io import resize_mask
from ..model.decisions import decision

GROUND_TRUTH_COLOUR = (255, 255, 0)
PREDICTION_COLOUR = (255, 0, 0)
TEXT_COLOUR = (0, 0, 0)
MAX_SIDE = 1536  # long side of a whole overlay picture
PANEL_TITLES = ("image (+ true defect)", "anomaly map", "predicted defect")
SHORT_TITLES = ("image", "map", "defect")  # when a panel is too narrow for the full title


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
    from scipy import ndimage  # on first outline: the command line starts without scipy

    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def _resized_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.shape[::-1] == size:
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.BILINEAR))


def _draw_contour(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int) -> np.ndarray:
    out = rgb.copy()
    out[mask_contour(mask, thickness=thickness)] = colour
    return out


def decision_text(score: Optional[float], threshold: Optional[float]) -> str:
    """"score 0.4210 | ANOMALOUS (threshold 0.3000)" (or NORMAL), without the decision when no threshold is known."""
    if score is None:
        return ""
    if threshold is None:
        return f"score {score:.4f} | no threshold"
    return f"score {score:.4f} | {decision(score, threshold).upper()} (threshold {threshold:.4f})"


@dataclass(frozen=True)
class OverlayLayout:
    """Sizes of one overlay picture, all derived from the panel size (so text stays readable at any size)."""

    panel: tuple[int, int]  # (width, height) of each of the three panels
    header_lines: int

    @property
    def font_size(self) -> int:
        return max(11, round(min(self.panel[0], 1.5 * self.panel[1]) / 18))

    @property
    def line_height(self) -> int:
        return round(self.font_size * 1.3)

    @property
    def header_height(self) -> int:
        return 0 if self.header_lines == 0 else self.header_lines * self.line_height + self.font_size // 2

    @property
    def title_height(self) -> int:
        return self.line_height + 2

    @property
    def bar_width(self) -> int:
        """The colour bar strip: the bar itself plus room for its tick labels."""
        return max(4, round(self.panel[0] / 25)) + 5 * self.font_size

    @property
    def outline(self) -> int:
        return max(2, round(min(self.panel) / 100))

    @property
    def size(self) -> tuple[int, int]:
        return (3 * self.panel[0] + self.bar_width, self.header_height + self.title_height + self.panel[1])


def overlay_layout(image_size: tuple[int, int], header_lines: int, max_side: int = MAX_SIDE) -> OverlayLayout:
    """The layout of an image of `image_size`, its panels scaled down until the picture fits `max_side`."""
    width, height = image_size
    layout = OverlayLayout((width, height), header_lines)
    while max(layout.size) > max_side:
        # The short side stops at 16 px; the long side keeps shrinking, so an extreme aspect ratio (a 4000 x 40
        # strip) is squeezed rather than drawn wider than max_side.
        scale = max_side / max(layout.size) * 0.99
        smaller = OverlayLayout((max(16, int(layout.panel[0] * scale)), max(16, int(layout.panel[1] * scale))),
                                header_lines)
        if smaller.panel == layout.panel:  # 16 x 16 panels: nothing left to shrink
            break
        layout = smaller
    return layout


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _colour_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: OverlayLayout, left: int, top: int,
                scale_max: float, pixel_threshold: Optional[float], font) -> None:
    """A vertical jet bar from 0 (bottom) to `scale_max` (top) with tick labels and the threshold marked."""
    bar_width = max(4, round(layout.panel[0] / 25))
    x0, x1 = left + layout.font_size // 3, left + layout.font_size // 3 + bar_width
    height = layout.panel[1]
    colours = jet(1.0 - np.arange(height) / max(height - 1, 1))  # one row per value, top = scale_max
    canvas.paste(Image.fromarray(np.repeat(colours[:, None, :], x1 - x0 + 1, axis=1)), (x0, top))
    ticks = [(0.0, "0"), (scale_max, f"{scale_max:.3g}")]
    for value, text in ticks:
        y = top + round((1.0 - value / scale_max) * (height - 1))
        draw.text((x1 + 3, min(max(y - layout.font_size // 2, top), top + height - layout.font_size)), text,
                  fill=TEXT_COLOUR, font=font)
    if pixel_threshold is not None and 0 < pixel_threshold <= scale_max:
        y = top + round((1.0 - pixel_threshold / scale_max) * (height - 1))
        draw.line([(x0 - layout.font_size // 3, y), (x1 + 2, y)], fill=TEXT_COLOUR, width=max(2, layout.outline))
        draw.text((x1 + 3, y - layout.font_size // 2), f"thr {pixel_threshold:.3g}", fill=TEXT_COLOUR, font=font)


def panel_titles(has_ground_truth: bool, has_pixel_threshold: bool) -> list[tuple[str, str]]:
    """(title, short title) of the three panels: "true defect" only where a mask is drawn, "predicted defect"
    only where a pixel threshold draws one."""
    titles = list(zip(PANEL_TITLES, SHORT_TITLES))
    if not has_ground_truth:
        titles[0] = ("image", "image")
    if not has_pixel_threshold:
        titles[2] = ("image (no pixel threshold)", "image (no pixel threshold)")
    return titles


def anomaly_panel(image: Image.Image, anomaly_map: np.ndarray, *, score: Optional[float] = None,
                  threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                  ground_truth: Optional[np.ndarray] = None, vmax: Optional[float] = None, alpha: float = 0.4,
                  note: str = "", max_side: int = MAX_SIDE) -> Image.Image:
    """The overlay picture of one scored image (see the module docstring; `overlay_layout` gives its size).

    pixel_threshold: map values above it form the predicted defect (its outline is drawn in red) and it is
        marked on the colour bar; ground_truth: a 0/1 mask of any size (its outline is drawn in yellow);
    note: extra header text, e.g. "PIPELINE CHECK (random backbone), not a detection result".
    """
    lines = [line for line in (decision_text(score, threshold), note) if line]
    rgb_image = image.convert("RGB")
    layout = overlay_layout(rgb_image.size, len(lines), max_side)
    size = layout.panel
    if rgb_image.size != size:
        rgb_image = rgb_image.resize(size, Image.BILINEAR)
    rgb = np.asarray(rgb_image)
    values = _resized_map(anomaly_map, size)
    scale_max = colour_scale(values, pixel_threshold, vmax)
    heat = jet(values / scale_max)
    blended = ((1.0 - alpha) * rgb + alpha * heat).round().astype(np.uint8)
    first = rgb if ground_truth is None else _draw_contour(
        rgb, resize_mask((np.asarray(ground_truth) > 0).astype(np.uint8), size) > 0, GROUND_TRUTH_COLOUR,
        layout.outline)
    third = rgb if pixel_threshold is None else _draw_contour(rgb, values > pixel_threshold, PREDICTION_COLOUR,
                                                              layout.outline)

    canvas = Image.new("RGB", layout.size, (255, 255, 255))
    top = layout.header_height + layout.title_height
    for column, panel in enumerate((first, blended, third)):
        canvas.paste(Image.fromarray(panel), (column * size[0], top))
    draw, font = ImageDraw.Draw(canvas), _font(layout.font_size)
    for number, line in enumerate(lines):
        draw.text((layout.font_size // 2, layout.font_size // 4 + number * layout.line_height), line,
                  fill=TEXT_COLOUR, font=font)
    for column, (title, short) in enumerate(panel_titles(ground_truth is not None, pixel_threshold is not None)):
        if draw.textlength(title, font=font) > size[0] - layout.font_size // 2:
            title = short
        draw.text((column * size[0] + layout.font_size // 3, layout.header_height), title, fill=TEXT_COLOUR,
                  font=font)
    _colour_bar(canvas, draw, layout, 3 * size[0], top, scale_max, pixel_threshold, font)
    return canvas

