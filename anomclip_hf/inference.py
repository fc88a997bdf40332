"""Scoring many images in batches (predict, demo and evaluation share this loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .image_io import ImageReadError, PathOrImage, load_image
from .modeling_anomclip import AnomCLIPModel
from .precision import resolve_precision, tower_autocast
from .processing_anomclip import preprocess_images


@dataclass
class ScoredBatch:
    indices: list[int]
    images: list  # the decoded RGB PIL images, for pictures without reading the files again
    image_scores: np.ndarray  # (b,)
    anomaly_maps: np.ndarray  # (b, H, W) float32
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, error) of unreadable inputs


def _decode(chunk, start: int, skip_unreadable: bool) -> tuple[list[int], list, list[tuple[int, str]]]:
    indices, decoded, failures = [], [], []
    for offset, item in enumerate(chunk):
        try:
            decoded.append(load_image(item))
            indices.append(start + offset)
        except ImageReadError as error:
            if not skip_unreadable:
                raise
            failures.append((start + offset, str(error)))
    return indices, decoded, failures


def score_images(model: AnomCLIPModel, images: Sequence[PathOrImage], batch_size: int = 16, output_size: Optional[int] = None,
                 category: Optional[str] = None, progress: bool = True, description: str = "scoring",
                 skip_unreadable: bool = False, autocast_dtype: Optional[torch.dtype] = None,
                 precision: str = "fp32") -> Iterator[ScoredBatch]:
    """Yield scores batch by batch, so a whole test split never sits in memory at once.

    skip_unreadable: report files that cannot be decoded in `ScoredBatch.failures` and score the rest
    (default: raise the ImageReadError naming the file).
    precision: "fp32", "bf16", "fp16" or "auto" (see `precision`): the vision tower runs under autocast; the
    memory distances, text scores and maps stay float32. `autocast_dtype` (a torch dtype) is the older
    spelling and wins when given.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    low = autocast_dtype if autocast_dtype is not None else resolve_precision(precision, model.device)
    with tqdm(total=len(images), desc=description, disable=not progress, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start: start + batch_size]
            indices, decoded, failures = _decode(chunk, start, skip_unreadable)
            if decoded:
                pixel_values = preprocess_images(decoded, model.config.image_size)
                with torch.inference_mode(), tower_autocast(low, model.device):
                    out = model(pixel_values, category=category, output_size=output_size)
                scores, maps = out.image_scores.float().cpu().numpy(), out.anomaly_maps.float().cpu().numpy()
            else:
                scores, maps = np.zeros(0, np.float32), np.zeros((0, 0, 0), np.float32)
            yield ScoredBatch(indices=indices, images=decoded, image_scores=scores, anomaly_maps=maps,
                              failures=failures)
            bar.update(len(chunk))

