"""Tiled scoring with the PyTorch model: references, memory, leave-one-out thresholds and test images.

The geometry and the stitching are `io.tiling` (numpy, shared with the ONNX Runtime detector); this module runs
the tiles through the model. See docs/guides/tiling.md.

- `encode_tiled_references`: every reference cut into tiles (one size for all references), the tiles encoded
  in batches; the memory is then built from the tiles' patches by the unchanged rule (exact, or a coreset).
- `tiled_leave_one_out`: reference i (all its tiles) against the memory without reference i's tiles, stitched
  and scored as a whole image: the stored threshold is one threshold for a whole image.
- `score_tiled`: test images tiled, tiles scored in batches, one stitched full-resolution map per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..io.pixel_arrays import ImageInput, as_pil
from ..io.tiling import (
    StitchedImage,
    TileGrid,
    TilingError,
    TilingSpec,
    check_same_size,
    plan_tiles,
    stitch_image,
    tile_crops,
    tile_sigma,
    whole_image,
    whole_image_sigma,
)
from ..memory.rows import SpilledRows
from .processing_anomclip import model_pixel_values
from .thresholds import DEFAULT_MARGIN, ThresholdEstimate, record_thresholds, threshold_estimate
from .vv_attention import VisionFeatures
from ..errors import ArgumentError

TILE_BATCH = 64  # tiles per forward of the vision tower


@dataclass
class TiledReferences:
    """The references' tiles: their features (tile after tile, reference after reference), the reference each
    tile comes from, and the one grid they share."""

    features: VisionFeatures
    owners: torch.Tensor  # (tiles,) int64: the reference image of each tile
    grid: TileGrid
    references: int

    def record(self, spec: TilingSpec) -> dict:
        """category.json "tiling": what fit used, so predict tiles alike."""
        grid = self.grid
        return {**spec.record(), "tile_pixels": grid.tile, "stride": grid.stride,
                "reference_size": [grid.height, grid.width], "tiles_per_reference": grid.count,
                "references": self.references}


def image_array(item: ImageInput) -> np.ndarray:
    """(H, W, 3) uint8 of a path, PIL image or array (decoded as every scoring path decodes)."""
    return np.asarray(as_pil(item))


def model_tile_grid(model, spec: TilingSpec, height: int, width: int) -> Optional[TileGrid]:
    """`io.tiling.plan_tiles` for the model's tower (None: the image is scored whole)."""
    if getattr(model, "has_dino_memory", False):
        raise TilingError(f"{spec.describe()}: tiling is not supported with a DINOv2 memory backbone "
                          f"({model.config.memory_backbone}); score without --tile")
    vision = model.config.clip_config.vision_config
    return plan_tiles(height, width, spec, int(vision.image_size), int(vision.patch_size))


def reference_tile_grid(model, image: ImageInput, spec: TilingSpec) -> Optional[TileGrid]:
    """The grid of a reference set, from its first image (all must share its size)."""
    array = image_array(image)
    return model_tile_grid(model, spec, *array.shape[:2])


def tile_pixel_values(model, image: np.ndarray, grid: TileGrid) -> torch.Tensor:
    """(N, 3, S, S) pixel values of an image's tiles (each crop preprocessed as a whole image would be)."""
    return model_pixel_values(model.config, list(tile_crops(image, grid)))


def _encode(model, pixel_values: torch.Tensor, batch_size: int) -> list[VisionFeatures]:
    parts = []
    with torch.inference_mode():
        for start in range(0, pixel_values.shape[0], batch_size):
            parts.append(model.encode_images(pixel_values[start: start + batch_size].to(model.device)))
    return parts


def encode_tiled_references(model, images: Sequence[ImageInput], spec: TilingSpec, names: Optional[Sequence[str]] = None,
                            batch_size: int = TILE_BATCH, spill: bool = False, progress: bool = False
                            ) -> Optional[TiledReferences]:
    """The tiles of every reference through the vision tower (None when the grid is the whole image: the caller
    then encodes the references untiled). References of different sizes are refused (TilingError naming two).
    spill: the memory features go to `SpilledRows` (a coreset is built from them) instead of memory."""
    images = list(images)
    if not images:
        raise ArgumentError("reference_images is empty: pass at least one normal image")
    names = [str(name) for name in names] if names is not None else [f"reference {i}" for i in range(len(images))]
    first = image_array(images[0])
    height, width = first.shape[:2]
    grid = model_tile_grid(model, spec, height, width)
    if grid is None:
        return None
    global_parts, patch_parts, owners, layers = [], [], [], None
    bar = _bar(len(images), progress, "tiled references")
    for index, item in enumerate(images):
        array = first if index == 0 else image_array(item)
        check_same_size([(height, width), array.shape[:2]], [names[0], names[index]])
        for features in _encode(model, tile_pixel_values(model, array, grid), batch_size):
            if layers is None:
                layers = [SpilledRows(f.shape[-1]) if spill else [] for f in features.memory_features]
            for part, layer in zip(layers, features.memory_features):
                part.append(layer.float().cpu() if spill else layer.float())
            global_parts.append(features.global_embeds)
            patch_parts.append(features.patch_embeds)
        owners.append(torch.full((grid.count,), index, dtype=torch.long))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    memory = [layer if spill else torch.cat(layer) for layer in layers]
    return TiledReferences(VisionFeatures(torch.cat(global_parts), torch.cat(patch_parts), memory),
                           torch.cat(owners), grid, len(images))


def _numpy(tensor: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if tensor is None else tensor.float().cpu().numpy()


def _stitched(model, grid: TileGrid, terms: list) -> StitchedImage:
    """Stitch the per-chunk `patch_terms` of one image's tiles."""
    def joined(name):
        values = [getattr(t, name) for t in terms]
        return None if values[0] is None else np.concatenate([_numpy(v) for v in values])

    config = model.config
    return stitch_image(grid, joined("patch_scores"), joined("visual_patch"), joined("text_image"),
                        tile_sigma(config.gaussian_sigma, config.sigma_reference_size, grid))


def score_tiled_image(model, image: ImageInput, spec: TilingSpec, category: Optional[str] = None,
                      mode: Optional[str] = None, batch_size: int = TILE_BATCH,
                      memory_bank: Optional[Sequence[torch.Tensor]] = None) -> StitchedImage:
    """One image: its tiles scored in batches (memory and prompts), one stitched full-resolution map, the image
    score from that map (`io.tiling.stitch_image`). An image the grid leaves whole is scored untiled, its map
    resized to the image."""
    array = image_array(image)
    height, width = array.shape[:2]
    grid = model_tile_grid(model, spec, height, width)
    if grid is None:
        return _whole_image(model, array, category, mode, memory_bank)
    terms = []
    for features in _encode(model, tile_pixel_values(model, array, grid), batch_size):
        with torch.inference_mode():
            terms.append(model.patch_terms(features, category, mode, memory_bank))
    return _stitched(model, grid, terms)


def _whole_image(model, array, category, mode, memory_bank) -> StitchedImage:
    pixel_values = model_pixel_values(model.config, [array]).to(model.device)
    height, width = array.shape[:2]
    config = model.config
    with torch.inference_mode():
        terms = model.patch_terms(model.encode_images(pixel_values), category, mode, memory_bank)
    return whole_image(height, width, _numpy(terms.patch_scores), _numpy(terms.visual_patch),
                       _numpy(terms.text_image), whole_image_sigma(config.gaussian_sigma,
                                                                   config.sigma_reference_size, height, width),
                       config.scoring_size)


def score_tiled(model, images: Sequence[ImageInput], spec: TilingSpec, category: Optional[str] = None,
                mode: Optional[str] = None, batch_size: int = TILE_BATCH) -> tuple[np.ndarray, list]:
    """(image scores (B,) float32, maps: one (H, W) float32 array per image, at its own size)."""
    results = [score_tiled_image(model, image, spec, category, mode, batch_size) for image in images]
    return (np.asarray([r.image_score for r in results], dtype=np.float32), [r.anomaly_map for r in results])


def _tile_features(features: VisionFeatures, tiles: torch.Tensor) -> VisionFeatures:
    memory = []
    for layer in features.memory_features:
        if isinstance(layer, SpilledRows):
            patches = int(features.patch_embeds.shape[1])
            start, stop = int(tiles[0]) * patches, (int(tiles[-1]) + 1) * patches
            memory.append(layer[start:stop].reshape(len(tiles), patches, layer.width))
        else:
            memory.append(layer[tiles])
    return VisionFeatures(features.global_embeds[tiles], features.patch_embeds[tiles], memory)


def tiled_leave_one_out(model, references: TiledReferences, category: Optional[str] = None,
                        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores (k,), map maxima (k,)): every reference, all its tiles, scored against the memory without
    its own tiles' rows, and stitched into one map: the leave-one-out of a whole image."""
    state = model.get_category(category)
    bank = state.memory_bank
    if bank is None or references.references < 2:
        raise ArgumentError(f"category {state.name!r}: leave-one-out thresholds need at least 2 tiled references")
    if state.coreset is not None:
        if state.coreset_sources is None:
            raise ArgumentError(f"category {state.name!r} has a coreset memory loaded from an adapter: thresholds are "
                             "estimated where it is built")
        row_owner = [references.owners[source.cpu()] for source in state.coreset_sources]
    else:
        row_owner = [references.owners for _ in bank]
    device = bank[0].device
    image_scores, pixel_maxima = [], []
    bar = _bar(references.references, progress, "thresholds")
    for index in range(references.references):
        others = [layer[(owner != index).to(device)] for layer, owner in zip(bank, row_owner)]
        if min(layer.shape[0] for layer in others) == 0:
            raise ArgumentError(f"every memory row comes from reference {index}: no memory of the other references "
                             "is left to score it against; keep more rows (memory_size)")
        tiles = (references.owners == index).nonzero().flatten()
        terms = []
        with torch.inference_mode():
            for start in range(0, len(tiles), TILE_BATCH):
                held_out = _tile_features(references.features, tiles[start: start + TILE_BATCH])
                held_out = VisionFeatures(held_out.global_embeds, held_out.patch_embeds,
                                          [layer.to(device) for layer in held_out.memory_features])
                terms.append(model.patch_terms(held_out, state.name, None, others))
        stitched = _stitched(model, references.grid, terms)
        image_scores.append(stitched.image_score)
        pixel_maxima.append(float(stitched.anomaly_map.max()))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return torch.tensor(image_scores), torch.tensor(pixel_maxima)


def estimate_tiled_thresholds(model, references: TiledReferences, category: Optional[str] = None,
                              margin: Optional[float] = None, progress: bool = False) -> ThresholdEstimate:
    """`thresholds.threshold_estimate` of the tiled leave-one-out, stored in the category's metadata."""
    estimate = threshold_estimate(*tiled_leave_one_out(model, references, category, progress),
                                  DEFAULT_MARGIN if margin is None else margin)
    estimate.method = "leave-one-out over the whole tiled references"
    record_thresholds(model.get_category(category).metadata, estimate)
    return estimate


def add_tiled_category(model, name: str, references: TiledReferences, spec: TilingSpec, **kwargs):
    """`model.add_category` with the memory of the references' tiles, recording the tiling in its metadata."""
    state = model.add_category(name, reference_images=references.features, **kwargs)
    state.metadata["tiling"] = references.record(spec)
    return state


def _bar(total: int, enabled: bool, description: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", leave=False)
