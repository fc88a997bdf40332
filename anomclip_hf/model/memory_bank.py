"""A category's visual memory from its reference images, for any number of them (issue 23).

- `encode_references`: the references through the vision tower `REFERENCE_BATCH` images at a time (decoded,
  preprocessed and encoded per batch, so the decoded images never all sit in memory); with `spill`, the memory
  features go to a temporary file (`memory.rows.SpilledRows`) instead of memory.
- `build_memory`: the exact bank (k, P, W) per memory layer, or PatchCore's greedy coreset (M, W) per layer with
  its coverage radius (`memory.coreset`); `memory.policy.memory_rows` says which.
- `coreset_leave_one_out`: the leave-one-out scores behind the decision threshold of a coreset memory. Reference
  i is scored against the coreset without the rows taken from reference i: the memory the deployed model
  really has, less what that reference contributed. An unseen normal image meets exactly that memory (the
  coreset, none of its own patches), so the threshold describes the deployed bank. Against the full bank's
  leave-one-out it is never lower (a subset of the other references' rows is farther away, and the fusion is
  increasing): the coreset's extra distance, at most the coverage radius per patch, is in the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

from ..io.progress import Phase
from ..memory.coreset import select_coreset, take_rows
from ..memory.rows import SpilledRows
from .processing_anomclip import model_inputs
from .vv_attention import VisionFeatures

REFERENCE_BATCH = 32
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
        raise ValueError("reference_images is empty: pass at least one normal image (or None for text-only "
                         "zero-shot scoring)")
    global_parts, patch_parts, layer_parts = [], [], None
    bar = _bar(count, progress)
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


def coreset_leave_one_out(model, category: str, bank: Sequence[torch.Tensor], sources: Sequence[torch.Tensor],
                          references: VisionFeatures, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores (k,), map maxima (k,)): reference i against the coreset rows not taken from reference i."""
    count, patches = int(references.global_embeds.shape[0]), int(references.patch_embeds.shape[1])
    device = bank[0].device
    image_scores, pixel_maxima = [], []
    bar = _bar(count, progress, "thresholds")
    with torch.inference_mode():
        for index in range(count):
            held_out = VisionFeatures(references.global_embeds[index: index + 1],
                                      references.patch_embeds[index: index + 1],
                                      [image_memory_rows(layer, index, patches).to(device)
                                       for layer in references.memory_features])
            others = [layer[(source != index).to(device)] for layer, source in zip(bank, sources)]
            if min(layer.shape[0] for layer in others) == 0:
                raise ValueError(f"every kept memory row of a layer comes from reference {index}: no memory of the "
                                 "other references is left to score it against; keep more rows (memory_size)")
            out = model.score_features(held_out, category, output_size=model.config.scoring_size, memory_bank=others)
            image_scores.append(out.image_scores[0].float().cpu())
            pixel_maxima.append(out.anomaly_maps[0].float().max().cpu())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return torch.stack(image_scores), torch.stack(pixel_maxima)


def _bar(total: int, enabled: bool, description: str = "references"):
    return Phase(description, total, "img") if enabled else None
