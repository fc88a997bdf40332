"""Scoring many images in batches with the PyTorch model (predict, demo and evaluation share this loop)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from ..flags.numeric import MAX_OUTPUT_SIZE
from ..io.batches import ScoredBatch, scored_batches
from ..io.image_io import PathOrImage
from ..model.modeling_anomclip import AnomCLIPModel
from ..model.precision import resolve_precision, tower_autocast
from ..model.processing_anomclip import model_inputs

__all__ = ["ScoredBatch", "score_images"]


def score_images(model: AnomCLIPModel, images: Sequence[PathOrImage], batch_size: int = 16, output_size: Optional[int] = None,
                 category: Optional[str] = None, progress: bool = True, description: str = "scoring",
                 skip_unreadable: bool = False, autocast_dtype: Optional[torch.dtype] = None,
                 precision: str = "fp32", mode: Optional[str] = None) -> Iterator[ScoredBatch]:
    """Yield scores batch by batch (see `batches.scored_batches`).

    skip_unreadable: report files that cannot be decoded in `ScoredBatch.failures` and score the rest
    (default: raise the ImageReadError naming the file).
    precision: "fp32", "bf16", "fp16" or "auto" (see `precision`): the vision tower runs under autocast; the
    memory distances, text scores and maps stay float32. `autocast_dtype` (a torch dtype) is the older
    spelling and wins when given. mode: the model's scoring mode ("full", "memory", "text"; default: its own).
    """
    if output_size is not None and not 1 <= output_size <= MAX_OUTPUT_SIZE:
        raise ValueError(f"output_size={output_size}; expected 1..{MAX_OUTPUT_SIZE} (or None: the model input size)")
    low = autocast_dtype if autocast_dtype is not None else resolve_precision(precision, model.device)

    def score(decoded: list):
        inputs = model_inputs(model.config, decoded)  # pixel_values (+ memory_pixel_values for a DINO memory)
        with torch.inference_mode(), tower_autocast(low, model.device):
            out = model(**inputs, category=category, output_size=output_size, mode=mode)
        return out.image_scores.float().cpu().numpy(), out.anomaly_maps.float().cpu().numpy()

    return scored_batches(images, score, batch_size=batch_size, progress=progress, description=description,
                          skip_unreadable=skip_unreadable)
