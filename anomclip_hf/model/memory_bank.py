"""A category's visual memory from its reference images, for any number of them.

- `encode_references`: the references through the vision tower `REFERENCE_BATCH` images at a time (decoded,
  preprocessed and encoded per batch, so the decoded images never all sit in memory); with `spill`, the memory
  features go to a temporary file (`memory.rows.SpilledRows`) instead of memory.
- `build_memory`: the exact bank (k, P, W) per memory layer, or PatchCore's greedy coreset (M, W) per layer with
  its coverage radius (`memory.coreset`); `memory.policy.memory_rows` says which.
- `memory_plan` and `memory_from_references`: what `AnomCLIPModel.build_memory` does with a model's references.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from ..errors import ArgumentError
from ..io.progress import Phase
from ..memory.coreset import select_coreset, take_rows
from ..memory.policy import default_rule_text, memory_rows
from ..memory.rows import SpilledRows
from .category import MAX_SHOTS
from .processing_anomclip import model_inputs
from .vv_attention import VisionFeatures

REFERENCE_BATCH = 32
logger = logging.getLogger(__name__)
CORESET_METHOD = "greedy_k_center"


@dataclass
class MemoryBank:
    """Per memory layer: (k, P, W) exact or (M, W) coreset unit patch features (float32)."""

    layers: list
    references: int  # k, the reference images it was built from
    coreset: Optional[dict] = None  # category.json "memory.coreset" (None: the exact bank)
    sources: Optional[list] = None  # per layer (M,) int64: the reference image each kept row comes from


def _batches(references, batch_size: int):
    if isinstance(references, Mapping):  # every tensor of the processor's output, sliced alike
        count = int(references["pixel_values"].shape[0])
        for start in range(0, count, batch_size):
            yield {key: value[start: start + batch_size] for key, value in references.items()}
        return
    if isinstance(references, torch.Tensor):
        for start in range(0, references.shape[0], batch_size):
            yield references[start: start + batch_size]
        return
    for start in range(0, len(references), batch_size):
        yield references[start: start + batch_size]


def encode_references(model, references, batch_size: int = REFERENCE_BATCH, spill: bool = False,
                      progress: bool = False) -> VisionFeatures:
    """`model.encode_images` of the references (PIL images, paths, pixel values, or the processor's dict with
    memory_pixel_values for a DINOv2 memory), `batch_size` at a time.

    spill: the memory features go to one `SpilledRows` per layer (k x P rows, image by image) instead of
    (k, P, W) tensors; global and patch embeddings stay in memory (training and the thresholds use them)."""
    if isinstance(references, Mapping):  # the processor's pixel_values (+ memory_pixel_values for a DINO memory)
        references = {key: value for key, value in references.items()
                      if key in ("pixel_values", "memory_pixel_values")}
    elif not isinstance(references, torch.Tensor):
        references = list(references)
    count = (int(references["pixel_values"].shape[0]) if isinstance(references, Mapping)
             else int(references.shape[0]) if isinstance(references, torch.Tensor) else len(references))
    if count == 0:
        raise ArgumentError("reference_images is empty: pass at least one normal image (or None for text-only "
                         "zero-shot scoring)")
    global_parts, patch_parts, layer_parts = [], [], None
    bar = progress_bar(count, progress)
    with torch.no_grad():
        for chunk in _batches(references, batch_size):
            inputs = (chunk if isinstance(chunk, Mapping) else {"pixel_values": chunk}
                      if isinstance(chunk, torch.Tensor) else model_inputs(model.config, chunk))
            features = model.encode_images(**{key: value.to(model.device) for key, value in inputs.items()})
            pixel_values = inputs["pixel_values"]
            if layer_parts is None:
                layer_parts = [SpilledRows(f.shape[-1]) if spill else [] for f in features.memory_features]
            for parts, layer in zip(layer_parts, features.memory_features):
                parts.append(layer.float().cpu() if spill else layer.float())
            global_parts.append(features.global_embeds)
            patch_parts.append(features.patch_embeds)
            if bar is not None:
                bar.update(int(pixel_values.shape[0]))
    if bar is not None:
        bar.close()
    layers = [parts if spill else torch.cat(parts) for parts in layer_parts]
    return VisionFeatures(torch.cat(global_parts), torch.cat(patch_parts), layers)


def build_memory(features: VisionFeatures, size: Optional[int], seed: int = 0, progress: bool = False) -> MemoryBank:
    """The exact bank (size None) or a greedy coreset of `size` rows per memory layer of `features`."""
    if size is None:
        return MemoryBank([_whole(layer, features).detach().float() for layer in features.memory_features],
                          int(features.global_embeds.shape[0]))
    patches = int(features.patch_embeds.shape[1])
    kept, sources, radii, dims = [], [], [], []
    for layer in features.memory_features:
        rows = layer if isinstance(layer, SpilledRows) else layer.detach().reshape(-1, layer.shape[-1])
        coreset = select_coreset(rows, size, seed, progress=progress)
        kept.append(take_rows(rows, coreset.indices).to(features.global_embeds.device))
        sources.append(coreset.indices // patches)
        radii.append(coreset.radius)
        dims.append(coreset.projection_dim)
        total = coreset.rows
    record = {"method": CORESET_METHOD, "size": int(size), "rows": int(total), "seed": int(seed),
              "projection_dim": dims[0], "coverage_radius": [float(r) for r in radii],
              "reference_patch_score_bound": float(sum(r * r / 4 for r in radii) / len(radii))}
    return MemoryBank(kept, int(features.global_embeds.shape[0]), record, sources)


def _whole(layer, features: VisionFeatures) -> torch.Tensor:
    if not isinstance(layer, SpilledRows):
        return layer
    return layer[:].reshape(features.patch_embeds.shape[0], features.patch_embeds.shape[1], layer.width)


def image_memory_rows(layer, index: int, patches: int) -> torch.Tensor:
    """(1, P, W) memory features of reference `index` from a (k, P, W) tensor or spilled rows."""
    if isinstance(layer, SpilledRows):
        return layer[index * patches: (index + 1) * patches].unsqueeze(0)
    return layer[index: index + 1]


def memory_plan(model, references: int, memory_size: Optional[int] = None, coreset_ratio: Optional[float] = None,
                log: bool = False) -> Optional[int]:
    """Rows a memory of `references` images keeps per layer on `model` (None: the exact bank), checked before any
    image is encoded: `memory.policy.memory_rows`, and an exact bank of at most MAX_SHOTS images."""
    rows = int(references) * model.num_patches
    size = memory_rows(rows, memory_size, coreset_ratio)
    if size is None and references > MAX_SHOTS:
        raise ArgumentError(f"{references} reference images in an exact memory bank; it holds at most {MAX_SHOTS}: "
                            "keep a coreset (memory_size, or coreset_ratio below 1)")
    if log and size is not None and memory_size is None and coreset_ratio is None:
        logger.warning(default_rule_text(rows, size))
    return size


def memory_from_references(model, reference_images, memory_size: Optional[int] = None,
                           coreset_ratio: Optional[float] = None, seed: int = 0, progress: bool = False) -> MemoryBank:
    """See `AnomCLIPModel.build_memory`."""
    if isinstance(reference_images, MemoryBank):
        return reference_images
    if isinstance(reference_images, Mapping):  # the processor's output: its tensors, not its keys
        count = len(reference_images["pixel_values"]) if "pixel_values" in reference_images else 0
    else:
        if not isinstance(reference_images, (torch.Tensor, VisionFeatures)):
            reference_images = list(reference_images)
        count = (reference_images.global_embeds.shape[0] if isinstance(reference_images, VisionFeatures)
                 else len(reference_images))
    if count == 0:
        raise ArgumentError("reference_images is empty: pass at least one normal image (or None for text-only "
                            "zero-shot scoring)")
    size = memory_plan(model, int(count), memory_size, coreset_ratio, log=True)
    if not isinstance(reference_images, VisionFeatures):
        reference_images = encode_references(model, reference_images, spill=size is not None, progress=progress)
    return build_memory(reference_images, size, seed, progress)


def progress_bar(total: int, enabled: bool, description: str = "references"):
    """A `Phase` of `total` images (a bar on a terminal, one line with its duration elsewhere), or None."""
    return Phase(description, total, "img") if enabled else None
