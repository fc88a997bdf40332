"""Scoring at native resolution with tiles: the grid, the crops and the stitching (numpy only).

Torch-free, so the PyTorch model (`model.tiling`) and the ONNX Runtime detector (`export.runtime`) tile and
stitch with the same code and give the same numbers.

Geometry. The vision tower sees S x S pixels as a g x g grid of patches (S = 240, patch 16: g = 15). A tile of
T image pixels (T a multiple of g) is resized to S, so one of its patches covers p = T / g image pixels (T = S:
the image at its own scale, p = the tower's patch). Tiles start every `stride` pixels, a multiple of p, so the
patches of every tile fall on ONE grid of p x p cells over the whole image. The last row and column of tiles
may reach past the image: the image is padded there by reflection (references are padded alike, so the memory
knows padded borders) and the map is cropped back to the image.

Stitching: per-tile patch scores, blended on the common patch grid. Each tile's patch scores are placed on the
image's patch grid; where tiles overlap, a cell is the weighted mean of the tiles covering it, with a weight
that falls linearly from the tile's centre to its edge (`tile_weights`). A patch at a tile's edge sees less
context than one at its centre; the blend takes a cell mostly from the tile in which it is most central, and
the weights change gradually across an overlap, so no step appears at a seam. The blended patch grid is then
turned into a map exactly as an untiled one is (`model.scoring.smooth_upsample`: bilinear upsampling, then
the Gaussian blur), only on a rectangle of cells instead of one g x g tile, so the blur runs across seams.
Stitching features before scoring was rejected: a patch's features depend on its tile (attention sees the
tile), so averaging them gives vectors no reference patch resembles, and scoring those would create the false
anomalies the blend avoids.

The image score comes from the stitched map by the untiled rule (`upsampled_peak`: the peak of the unblurred,
bilinearly upsampled memory map), never from an average of tile scores. The text branch's image-level term,
one per tile (each tile's global embedding against the image prompts), is combined by the maximum over the
tiles: a defect in one tile raises that tile's term, and a mean would dilute it by the number of tiles.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import ArgumentError

logger = logging.getLogger(__name__)

TILE_AUTO = "auto"
DEFAULT_OVERLAP = 0.25  # of the tile: every cell away from the image border is blended from 2+ tiles
# `--tile auto`: native scale (T = S) unless that needs more tiles than this per image; then the smallest
# tile (a multiple of g) that needs at most this many (each tile is one forward of the tower).
MAX_AUTO_TILES = 64
# `--tile auto` leaves an image whose shorter side is at most this many tower sizes whole (resizing it
# loses at most this factor of resolution).
AUTO_WHOLE_IMAGE_FACTOR = 1.5
TileSize = Union[int, str]
Overlap = Union[int, float]


class TilingError(ArgumentError):
    """A tiling setting or an image that cannot be tiled; the message names the flag."""


# ------------------------------------------------------------------------------------------- flags
def parse_tile(text) -> TileSize:
    """argparse type of --tile: "auto" or a tile side in pixels (>= 1)."""
    if isinstance(text, str) and text.strip().lower() == TILE_AUTO:
        return TILE_AUTO
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a tile side in pixels (an integer >= 1), got "
                                         f"{text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a tile side in pixels (an integer >= 1), got {text!r}")
    return value


def parse_overlap(text) -> Overlap:
    """argparse type of --tile-overlap: pixels (an integer >= 0) or a fraction of the tile in [0, 1)."""
    expected = "pixels (an integer >= 0) or a fraction of the tile from 0 to below 1 (e.g. 0.25)"
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = text
    else:
        try:
            value = int(text)
        except (TypeError, ValueError):
            try:
                value = float(text)
            except (TypeError, ValueError):
                raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if isinstance(value, float) and value.is_integer() and value >= 1:
        value = int(value)
    if isinstance(value, float) and not (math.isfinite(value) and 0 <= value < 1):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if isinstance(value, int) and value < 0:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


@dataclass(frozen=True)
class TilingSpec:
    """What was asked for: a tile side in pixels or "auto", and the overlap (pixels or a fraction)."""

    tile: TileSize
    overlap: Overlap = DEFAULT_OVERLAP

    def __post_init__(self):
        try:
            object.__setattr__(self, "tile", parse_tile(self.tile))
            object.__setattr__(self, "overlap", parse_overlap(self.overlap))
        except argparse.ArgumentTypeError as error:
            raise TilingError(f"--tile {self.tile} --tile-overlap {self.overlap}: {error}") from None

    def record(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap}

    def describe(self) -> str:
        return f"--tile {self.tile} --tile-overlap {self.overlap}"


def tiling_spec(tile: Optional[TileSize], overlap: Optional[Overlap] = None) -> Optional[TilingSpec]:
    """The spec of the --tile / --tile-overlap flags (None: no tiling); an overlap without a tile is refused."""
    if tile is None:
        if overlap is not None:
            raise TilingError(f"--tile-overlap {overlap} without --tile: give the tile size too (--tile SIZE or auto)")
        return None
    return TilingSpec(tile, DEFAULT_OVERLAP if overlap is None else overlap)


# ------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie. Positions are the tiles' top-left corners in image pixels."""

    height: int
    width: int
    tile: int  # pixels, a multiple of grid_side
    stride: int  # pixels, a multiple of patch_pixels
    grid_side: int  # g: patches per tile side
    tops: tuple
    lefts: tuple

    @property
    def patch_pixels(self) -> int:
        return self.tile // self.grid_side

    @property
    def padded_height(self) -> int:
        return self.tops[-1] + self.tile

    @property
    def padded_width(self) -> int:
        return self.lefts[-1] + self.tile

    @property
    def cells(self) -> tuple[int, int]:
        """(rows, columns) of the image's patch grid (padded)."""
        return self.padded_height // self.patch_pixels, self.padded_width // self.patch_pixels

    @property
    def count(self) -> int:
        return len(self.tops) * len(self.lefts)

    def positions(self) -> list[tuple[int, int]]:
        """(top, left) of every tile, row by row: the order of `tile_crops` and of the stitched scores."""
        return [(top, left) for top in self.tops for left in self.lefts]

    def describe(self) -> str:
        return (f"{len(self.tops)} x {len(self.lefts)} tiles of {self.tile} px (stride {self.stride} px, "
                f"{self.tile - self.stride} px overlap) on {self.width} x {self.height} px")


def _starts(length: int, tile: int, stride: int) -> tuple:
    count = 1 if length <= tile else math.ceil((length - tile) / stride) + 1
    return tuple(index * stride for index in range(count))


def round_tile(tile: int, grid_side: int) -> int:
    """The nearest multiple of the tower's patch grid (at least one)."""
    return max(grid_side, int(round(tile / grid_side)) * grid_side)


def overlap_pixels(overlap: Overlap, tile: int) -> int:
    return int(round(overlap * tile)) if isinstance(overlap, float) else int(overlap)


def auto_tile(tower_size: int, grid_side: int, height: int, width: int, overlap: Overlap = DEFAULT_OVERLAP,
              max_tiles: int = MAX_AUTO_TILES) -> Optional[int]:
    """The tile `--tile auto` picks for an image (None: the whole image, resized, as without tiling).

    An image whose shorter side is at most AUTO_WHOLE_IMAGE_FACTOR tower sizes stays whole. Otherwise the
    tower's own size (the image at its native scale), grown in steps of the patch grid until the image needs at
    most `max_tiles` tiles."""
    if min(height, width) <= AUTO_WHOLE_IMAGE_FACTOR * tower_size:
        return None
    tile = round_tile(tower_size, grid_side)
    while tile < min(height, width):
        stride = _stride(tile, grid_side, overlap_pixels(overlap, tile))
        if len(_starts(height, tile, stride)) * len(_starts(width, tile, stride)) <= max_tiles:
            return tile
        tile += grid_side
    return round_tile(min(height, width), grid_side) if min(height, width) >= grid_side else None


def _stride(tile: int, grid_side: int, overlap: int) -> int:
    patch = tile // grid_side
    return max(patch, (tile - overlap) // patch * patch)


def plan_tiles(height: int, width: int, spec: TilingSpec, tower_size: int, patch_size: int
               ) -> Optional[TileGrid]:
    """The tile grid of a height x width image, or None: the whole image (resized, exactly the untiled path).

    A tile smaller than the tower's patch and an overlap >= the tile are refused (TilingError naming the flag);
    a tile larger than the image is the whole image; a tile larger than the shorter side of a non-square image
    shrinks to it; a tile that is no multiple of the tower's patch grid is rounded to one. Each adjustment is
    logged in one line naming the flag."""
    grid_side = tower_size // patch_size
    if spec.tile == TILE_AUTO:
        tile = auto_tile(tower_size, grid_side, height, width, spec.overlap)
        logger.info(f"--tile auto on {width} x {height} px images with the {tower_size} px tower: "
                    + ("the whole image (resized)" if tile is None else f"{tile} px tiles"))
        if tile is None:
            return None
    else:
        tile = int(spec.tile)
        if tile < patch_size:
            raise TilingError(f"--tile {tile}: smaller than one patch of the vision tower ({patch_size} px); expected "
                              f"at least {patch_size} px, or auto")
    overlap = overlap_pixels(spec.overlap, tile)
    if overlap >= tile:
        raise TilingError(f"--tile-overlap {spec.overlap}: {overlap} px is not less than the {tile} px tile; expected "
                          f"0 to {tile - 1} px or a fraction below 1")
    if tile >= max(height, width):
        logger.info(f"--tile {tile}: not smaller than the {width} x {height} px image: it is scored whole (resized)")
        return None
    rounded = round_tile(min(tile, min(height, width)), grid_side)
    while rounded > min(height, width):
        rounded -= grid_side
    if rounded < grid_side:
        raise TilingError(f"--tile {tile}: the {width} x {height} px image is smaller than one tile of {grid_side} px "
                          "(the tower's patch grid); score it without --tile")
    if rounded != tile:
        why = ("the image's shorter side" if tile > min(height, width)
               else f"a multiple of the tower's {grid_side}-patch grid")
        logger.info(f"--tile {tile}: {rounded} px tiles ({why})")
    overlap = min(overlap_pixels(spec.overlap, rounded) if isinstance(spec.overlap, float) else overlap, rounded - 1)
    stride = _stride(rounded, grid_side, overlap)
    return TileGrid(int(height), int(width), rounded, stride, grid_side,
                    _starts(int(height), rounded, stride), _starts(int(width), rounded, stride))


def tile_crops(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(N, T, T, C) tiles of an (H, W, C) uint8 image, in `grid.positions()` order; past the image, reflected."""
    if image.shape[:2] != (grid.height, grid.width):
        raise TilingError(f"an image of {image.shape[1]} x {image.shape[0]} px on a tile grid of "
                          f"{grid.width} x {grid.height} px")
    pad_y, pad_x = grid.padded_height - grid.height, grid.padded_width - grid.width
    padded = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect") if pad_y or pad_x else image
    return np.stack([padded[top: top + grid.tile, left: left + grid.tile] for top, left in grid.positions()])


# ------------------------------------------------------------------------------------------- stitching
@functools.lru_cache(maxsize=8)
def tile_weights(grid_side: int) -> np.ndarray:
    """(g, g) blending weights of a tile's patches: 1 at the edge, rising linearly to the centre."""
    ramp = np.minimum(np.arange(1, grid_side + 1), np.arange(grid_side, 0, -1)).astype(np.float64)
    return np.outer(ramp, ramp)


def stitch_patch_scores(tile_scores: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(rows, cols) patch grid of the whole (padded) image from (N, g*g) or (N, g, g) per-tile patch scores:
    each cell the weighted mean (`tile_weights`) of the tiles that cover it."""
    g = grid.grid_side
    scores = np.asarray(tile_scores, dtype=np.float64).reshape(-1, g, g)
    if scores.shape[0] != grid.count:
        raise ArgumentError(f"{scores.shape[0]} tiles of scores for a grid of {grid.count} tiles")
    weights = tile_weights(g)
    total, weight = np.zeros(grid.cells), np.zeros(grid.cells)
    step = grid.patch_pixels
    for tile, (top, left) in zip(scores, grid.positions()):
        rows, cols = slice(top // step, top // step + g), slice(left // step, left // step + g)
        total[rows, cols] += weights * tile
        weight[rows, cols] += weights
    return total / weight


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of 1-D bilinear resizing with align_corners=False (torch's F.interpolate)."""
    scale = in_size / out_size
    source = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    return matrix


def _blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(size, size) matrix of scipy.ndimage.gaussian_filter1d (mode "reflect") along one axis."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    index = (np.arange(size)[:, None] + offsets[None, :]) % (2 * size)
    index = np.where(index < size, index, 2 * size - 1 - index)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.repeat(np.arange(size), offsets.size), index.reshape(-1)), np.tile(kernel, size))
    return matrix


@functools.lru_cache(maxsize=16)
def _map_operator(cells: int, pixels_per_cell: int, keep: int, sigma: float) -> np.ndarray:
    """(keep, cells) float32: upsample `cells` to cells * pixels_per_cell pixels, blur, keep the first `keep`."""
    size = cells * pixels_per_cell
    matrix = _bilinear_matrix(cells, size)
    if sigma > 0:
        matrix = _blur_matrix(size, sigma) @ matrix
    return np.ascontiguousarray(matrix[:keep], dtype=np.float32)


def tile_sigma(gaussian_sigma: float, sigma_reference_size: int, grid: TileGrid) -> float:
    """The blur of a stitched map in image pixels: a tile is blurred as an untiled image of its size would be."""
    return max(float(gaussian_sigma), 0.0) * grid.tile / sigma_reference_size


def whole_image_sigma(gaussian_sigma: float, sigma_reference_size: int, height: int, width: int) -> float:
    """The blur of an untiled map of height x width pixels (`model.scoring.scaled_sigma`)."""
    return float(gaussian_sigma) * max(int(height), int(width)) / sigma_reference_size


def stitched_map(patch_grid: np.ndarray, grid: TileGrid, sigma: float = 0.0) -> np.ndarray:
    """(H, W) float32 map of a stitched patch grid: bilinear upsampling to pixels, Gaussian blur of `sigma`
    pixels (both as `model.scoring.smooth_upsample`), cropped to the image."""
    rows, cols = grid.cells
    step = grid.patch_pixels
    left = _map_operator(rows, step, grid.height, float(sigma))
    right = _map_operator(cols, step, grid.width, float(sigma))
    return left @ patch_grid.astype(np.float32) @ right.T


def stitched_peak(patch_grid: np.ndarray, grid: TileGrid) -> float:
    """The untiled image rule on the stitched grid: the peak of the unblurred, bilinearly upsampled map."""
    return float(stitched_map(patch_grid, grid).max())


def harmonic_fusion(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ab / (a + b), 0 where both are 0 (numpy twin of `model.scoring.harmonic_fusion`)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    total = a + b
    return np.where(total == 0, np.float32(0), a * b / np.maximum(total, np.finfo(np.float32).tiny))


@dataclass
class StitchedImage:
    image_score: float
    anomaly_map: np.ndarray  # (H, W) float32, blurred
    memory_peak: Optional[float]  # the peak of the stitched memory map (None in the text mode)
    text_image_score: Optional[float]  # the maximum of the tiles' text image terms (None in the memory mode)


def stitch_image(grid: TileGrid, patch_scores: np.ndarray, memory_patch_scores: Optional[np.ndarray],
                 text_image_scores: Optional[np.ndarray], sigma: float) -> StitchedImage:
    """One image's score and map from its tiles' scores (in `grid.positions()` order).

    patch_scores: (N, g*g) the map's patch scores (fused, memory or text: the mode's); memory_patch_scores:
    (N, g*g) or None; text_image_scores: (N,) or None. Image score: memory peak fused with the largest text term
    (full), the memory peak (memory) or the largest text term (text), as the untiled model's rule."""
    anomaly_map = stitched_map(stitch_patch_scores(patch_scores, grid), grid, sigma)
    peak = None if memory_patch_scores is None else stitched_peak(stitch_patch_scores(memory_patch_scores, grid), grid)
    text = None if text_image_scores is None else float(np.max(text_image_scores))
    if peak is not None and text is not None:
        score = float(harmonic_fusion(peak, text))
    else:
        score = peak if peak is not None else text
    return StitchedImage(score, anomaly_map, peak, text)


def whole_image(height: int, width: int, patch_scores: np.ndarray, memory_patch_scores: Optional[np.ndarray],
                text_image_scores: Optional[np.ndarray], sigma: float, scoring_size: int) -> StitchedImage:
    """An image the grid leaves whole (one tile: the image resized to the tower), as the untiled model scores it:
    the map at the image's size, the memory peak at `scoring_size` (`model.scoring.upsampled_peak`)."""
    side = int(round(math.sqrt(np.asarray(patch_scores).size)))
    cells = np.asarray(patch_scores, dtype=np.float32).reshape(side, side)
    anomaly_map = (_resize_operator(side, int(height), float(sigma)) @ cells
                   @ _resize_operator(side, int(width), float(sigma)).T)
    peak = None
    if memory_patch_scores is not None:
        memory = np.asarray(memory_patch_scores, dtype=np.float32).reshape(side, side)
        operator = _resize_operator(side, int(scoring_size), 0.0)
        peak = float((operator @ memory @ operator.T).max())
    text = None if text_image_scores is None else float(np.max(text_image_scores))
    if peak is not None and text is not None:
        score = float(harmonic_fusion(peak, text))
    else:
        score = peak if peak is not None else text
    return StitchedImage(score, anomaly_map, peak, text)


@functools.lru_cache(maxsize=16)
def _resize_operator(in_size: int, out_size: int, sigma: float) -> np.ndarray:
    matrix = _bilinear_matrix(in_size, out_size)
    if sigma > 0:
        matrix = _blur_matrix(out_size, sigma) @ matrix
    return np.ascontiguousarray(matrix, dtype=np.float32)


def check_same_size(sizes: Sequence[tuple[int, int]], names: Sequence[str]) -> tuple[int, int]:
    """The one (height, width) of a tiled reference set; TilingError naming two files of different sizes."""
    first = tuple(sizes[0])
    for size, name in zip(sizes, names):
        if tuple(size) != first:
            raise TilingError(f"--tile: reference images of different sizes in one run: {names[0]} is "
                              f"{first[1]} x {first[0]} px, {name} is {size[1]} x {size[0]} px; tiled references "
                              "must share one size (the threshold is for a whole image of that size)")
    return first


def resolve_tiling(recorded: Optional[dict], tile: Optional[TileSize] = None, overlap: Optional[Overlap] = None
                   ) -> Optional[TilingSpec]:
    """The tiling to score with: what the adapter's fit used (its category.json "tiling" record, or None: whole
    images). --tile / --tile-overlap may repeat it; a different setting is refused, naming both."""
    asked = tiling_spec(tile, overlap) if tile is not None or overlap is not None else None
    if recorded is None:
        if asked is not None:
            raise TilingError(f"{asked.describe()}: the adapter was fit on whole images (no --tile); score it without "
                              f"--tile, or fit again with {asked.describe()}")
        return None
    used = TilingSpec(recorded["tile"], recorded["overlap"])
    if asked is None:
        return used
    same_tile = asked.tile == used.tile
    same_overlap = overlap is None or asked.overlap == used.overlap
    if not (same_tile and same_overlap):
        raise TilingError(f"{asked.describe()} differs from the adapter's {used.describe()} (what fit used: its "
                          "memory and threshold are for those tiles); omit the flags or pass the adapter's")
    return used
