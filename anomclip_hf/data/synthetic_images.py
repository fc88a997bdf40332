"""Rendering small synthetic inspection images with real, drawn-in defects (numpy only).

A normal image is a textured disc (concentric rings over a fixed per-category texture) on a
gradient background. The category fixes the colours, ring pattern and texture, so normal images
of one category look alike; each image gets its own small shift, gain and pixel noise, so no two
are identical. Everything is seeded from (seed, category, image_id): same inputs, same pixels.

Defects are drawn onto the object:
    scratch  a dark, thick straight line
    blob     a saturated coloured ellipse
    missing  a patch where the object is replaced by the background behind it
`render_sample` returns the defect image, the same image without defects, and a mask that is
nonzero exactly where the two differ. `render_highres_sample` does the same for large images of a surface
filling the frame with small defects (a few pixels: what resizing to a tower's input removes). Every changed pixel changes by at least MIN_CHANGE in some
channel (smaller changes are reverted), so defects are always visible and masks are exact.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from ..errors import ArgumentError

DEFECT_TYPES = ("scratch", "blob", "missing")
MIN_CHANGE = 24  # per-pixel change (max over RGB) below which a defect pixel is reverted
_MIN_DEFECT_PIXELS = 6  # a defect smaller than this is redrawn
_BLOB_COLOURS = np.array([(225, 40, 35), (40, 200, 60), (45, 70, 225), (235, 205, 30), (205, 50, 205)], dtype=float)


@dataclass(frozen=True)
class SyntheticSample:
    image: np.ndarray  # (H, W, 3) uint8 with the defects drawn in
    clean: np.ndarray  # (H, W, 3) uint8, the same image rendered without defects
    mask: np.ndarray  # (H, W) uint8: 0 where image == clean, else the 1-based index of the defect


def rng_for(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded from an int and strings; crc32 rather than hash() so runs agree."""
    return np.random.default_rng(np.random.SeedSequence([int(seed)] + [zlib.crc32(part.encode()) for part in parts]))


def render_normal(category: str, image_id: str, size: int = 96, seed: int = 0) -> np.ndarray:
    """The defect-free (H, W, 3) uint8 image identified by (category, image_id, seed)."""
    return _render_layers(category, image_id, size, seed)[0]


def render_sample(
    category: str, image_id: str, size: int = 96, defects: Sequence[str] = (), seed: int = 0
) -> SyntheticSample:
    """The image with `defects` (names from DEFECT_TYPES, drawn in order) plus its clean version and mask."""
    clean, background, radius, centre = _render_layers(category, image_id, size, seed)
    image = clean.copy()
    labels = np.zeros(clean.shape[:2], dtype=np.uint8)
    rng = rng_for(seed, category, image_id, "defects")
    for number, defect in enumerate(defects, start=1):
        if defect not in DEFECT_TYPES:
            raise ArgumentError(f"unknown defect {defect!r}; expected one of {list(DEFECT_TYPES)}")
        for _ in range(20):  # redraw the rare defect that barely touches the object
            region, colour = _draw_defect(defect, rng, clean, background, radius, centre)
            candidate = image.copy()
            candidate[region] = colour if colour is not None else background[region]
            if (_change(candidate, clean) >= MIN_CHANGE)[region].sum() >= _MIN_DEFECT_PIXELS:
                break
        image = candidate
        labels[region] = number
    return _visible_sample(image, clean, labels)


def _visible_sample(image: np.ndarray, clean: np.ndarray, labels: np.ndarray) -> SyntheticSample:
    """The sample with changes too faint to see undone, and only visible changes labelled as defect."""
    change = _change(image, clean)
    image[(change > 0) & (change < MIN_CHANGE)] = clean[(change > 0) & (change < MIN_CHANGE)]
    labels[change < MIN_CHANGE] = 0
    return SyntheticSample(image=image, clean=clean, mask=labels)


def _change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


def _render_layers(category: str, image_id: str, size: int, seed: int) -> Tuple[np.ndarray, np.ndarray, float, tuple]:
    """(image, background layer, disc radius, disc centre (y, x)) of a normal image."""
    style = rng_for(seed, category, "style")
    base = style.uniform(110, 200, 3)
    base[style.integers(3)] = style.uniform(190, 235)  # one bright channel keeps the object far from the background
    top, bottom = style.uniform(15, 60, 3), style.uniform(35, 75, 3)
    ring_period = size * style.uniform(0.06, 0.12)
    ring_depth = style.uniform(0.12, 0.28)
    radius = size * style.uniform(0.32, 0.38)
    texture = style.normal(0, 6, (size, size, 1))

    own = rng_for(seed, category, image_id, "jitter")
    centre = (size / 2 + own.uniform(-0.04, 0.04) * size, size / 2 + own.uniform(-0.04, 0.04) * size)
    gain = own.uniform(0.93, 1.07)
    noise = own.normal(0, 1.5, (size, size, 3))

    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    distance = np.hypot(yy - centre[0], xx - centre[1])
    ramp = (yy / max(size - 1, 1))[..., None]
    background = top * (1 - ramp) + bottom * ramp
    rings = 1 - ring_depth * 0.5 * (1 + np.cos(2 * np.pi * distance / ring_period))
    disc = base * rings[..., None] * gain + texture
    image = np.where((distance <= radius)[..., None], disc, background) + noise
    return _to_uint8(image), _to_uint8(background + noise), radius, centre


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _draw_defect(defect, rng, clean, background, radius, centre):
    """(boolean region, flat colour or None for "show the background") of one defect on the disc."""
    size = clean.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    spot = rng.uniform(0, 0.55 * radius)
    cy, cx = centre[0] + spot * np.sin(angle), centre[1] + spot * np.cos(angle)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    if defect == "scratch":
        half = rng.uniform(0.2, 0.5) * radius
        direction = rng.uniform(0, np.pi)
        dy, dx = np.sin(direction), np.cos(direction)
        along = np.clip((yy - cy) * dy + (xx - cx) * dx, -half, half)
        gap = np.hypot(yy - (cy + along * dy), xx - (cx + along * dx))
        thickness = rng.uniform(2.0, max(2.5, size / 28))
        return gap <= thickness / 2, np.full(3, rng.uniform(8, 35))
    if defect == "blob":
        a, b = rng.uniform(0.04, 0.1, 2) * size
        tilt = rng.uniform(0, np.pi)
        u = (yy - cy) * np.sin(tilt) + (xx - cx) * np.cos(tilt)
        v = (yy - cy) * np.cos(tilt) - (xx - cx) * np.sin(tilt)
        object_colour = clean[int(round(np.clip(cy, 0, size - 1))), int(round(np.clip(cx, 0, size - 1)))].astype(float)
        farthest = np.argsort(-np.abs(_BLOB_COLOURS - object_colour).max(axis=1))[:2]
        return (u / a) ** 2 + (v / b) ** 2 <= 1, _BLOB_COLOURS[rng.choice(farthest)]
    half_h, half_w = rng.uniform(0.05, 0.1, 2) * size
    return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w), None


# ------------------------------------------------------------------------------------------- high resolution
SMALL_DEFECT_TYPES = ("spot", "scratch")
HIGHRES_SIZE = 1024
SMALL_DEFECT_SIZE = (4, 12)  # pixels, inclusive: a defect's diameter (spot) or length (scratch)


def render_surface(category: str, image_id: str, size: int = HIGHRES_SIZE, seed: int = 0) -> np.ndarray:
    """A defect-free (H, W, 3) uint8 surface filling the frame, as a sheet or a web under a line camera: the
    category fixes its colour and weave (period, depth, streaks); each image gets its own phase, gain, shading
    and pixel noise. Uniform: the same texture everywhere, so any structure in a map of it is the method's."""
    style = rng_for(seed, category, "surface style")
    base = style.uniform(110, 190, 3)
    period = style.uniform(14, 22, 2)
    depth = style.uniform(14, 24)
    streaks = np.convolve(style.normal(0, 5, size + 40), np.ones(9) / 9, mode="same")
    own = rng_for(seed, category, image_id, "surface jitter")
    phase, shift = own.uniform(0, 2 * np.pi, 2), int(own.integers(0, 40))
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    weave = np.sin(2 * np.pi * xx / period[0] + phase[0]) * np.sin(2 * np.pi * yy / period[1] + phase[1])
    shading = own.uniform(0.95, 1.05) + own.uniform(-0.03, 0.03) * (yy / size - 0.5)
    image = (base * shading[..., None] + depth * weave[..., None] + streaks[shift: shift + size][None, :, None]
             + own.normal(0, 2.0, (size, size, 3)))
    return _to_uint8(image)


def render_highres_sample(category: str, image_id: str, size: int = HIGHRES_SIZE, defect_count: int = 1,
                          defect_size: Tuple[int, int] = SMALL_DEFECT_SIZE, seed: int = 0) -> SyntheticSample:
    """A large surface (`render_surface`) with `defect_count` small defects of `defect_size` = (smallest,
    largest) pixels each: dark or coloured spots and thin scratches, which resizing the whole image to a tower's
    224-240 px shrinks below one pixel. `defect_count` 0: a normal image (mask all zero)."""
    low, high = (int(defect_size[0]), int(defect_size[1]))
    if not 1 <= low <= high:
        raise ArgumentError(f"defect_size={defect_size!r}; expected (smallest, largest) pixels with 1 <= smallest <= largest")
    if defect_count < 0:
        raise ArgumentError(f"defect_count={defect_count}; expected >= 0")
    clean = render_surface(category, image_id, size, seed)
    image, labels = clean.copy(), np.zeros(clean.shape[:2], dtype=np.uint8)
    rng = rng_for(seed, category, image_id, "small defects")
    for number in range(1, defect_count + 1):
        for _ in range(20):
            region, colour = _small_defect(rng, clean, low, high)
            candidate = image.copy()
            candidate[region] = colour
            if (_change(candidate, clean) >= MIN_CHANGE)[region].sum() >= min(_MIN_DEFECT_PIXELS, region.sum()):
                break
        image = candidate
        labels[region] = number
    return _visible_sample(image, clean, labels)


def _small_defect(rng, clean, low, high):
    """(boolean region, colour) of one small defect: a spot of diameter d or a scratch of length d, d in
    [low, high] pixels, away from the border."""
    size = clean.shape[0]
    cy, cx = rng.uniform(0.05 * size, 0.95 * size, 2)
    extent = rng.integers(low, high + 1)
    window = int(extent) + 3  # only a small window around the defect is computed
    top, left = int(max(0, cy - window)), int(max(0, cx - window))
    yy, xx = np.mgrid[top: min(size, int(cy + window) + 1), left: min(size, int(cx + window) + 1)].astype(float)
    if SMALL_DEFECT_TYPES[rng.integers(2)] == "spot":
        local = np.hypot(yy - cy, xx - cx) <= extent / 2
    else:
        direction = rng.uniform(0, np.pi)
        dy, dx = np.sin(direction), np.cos(direction)
        along = np.clip((yy - cy) * dy + (xx - cx) * dx, -extent / 2, extent / 2)
        local = np.hypot(yy - (cy + along * dy), xx - (cx + along * dx)) <= rng.uniform(0.6, 1.2)
    region = np.zeros(clean.shape[:2], dtype=bool)
    region[top: top + local.shape[0], left: left + local.shape[1]] = local
    here = clean[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))].astype(float)
    colours = np.vstack([_BLOB_COLOURS, [[15, 15, 15]]])
    return region, colours[int(np.argmax(np.abs(colours - here).max(axis=1)))]
