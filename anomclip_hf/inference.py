"""Scoring many images in batches (predict, demo and evaluation share this loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .image_io import PathOrImage, load_image
from .processing_anomclip import preprocess_images


@dataclass
class ScoredBatch:
    indices: list[int]
    images: list  # the decoded RGB PIL images, for pictures without reading the files again
    image_scores: np.ndarray  # (b,)
    anomaly_maps: np.ndarray  # (b, H, W) float32


def score_images(model, images: Sequence[PathOrImage], batch_size: int = 16, output_size: Optional[int] = None,
                 category: Optional[str] = None, progress: bool = True, description: str = "scoring"
                 ) -> Iterator[ScoredBatch]:
    """Yield scores batch by batch, so a whole test split never sits in memory at once."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    with tqdm(total=len(images), desc=description, disable=not progress, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start: start + batch_size]
            decoded = [load_image(item) for item in chunk]
            pixel_values = preprocess_images(decoded, model.config.image_size)
            with torch.no_grad():
                out = model(pixel_values, category=category, output_size=output_size)
            yield ScoredBatch(indices=list(range(start, start + len(chunk))), images=decoded,
                              image_scores=out.image_scores.float().cpu().numpy(),
                              anomaly_maps=out.anomaly_maps.float().cpu().numpy())
            bar.update(len(chunk))

