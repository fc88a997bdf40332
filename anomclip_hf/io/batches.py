"""Scoring many images in batches with any scorer: PyTorch (`inference.score_images`) or ONNX Runtime.

Torch-free: decoding, batching, skipping unreadable files and the progress bar, shared by both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .image_io import ImageReadError, PathOrImage, load_image
from ..errors import ArgumentError

# decoded RGB PIL images -> (image scores (b,), anomaly maps (b, H, W)) as float32 numpy arrays
BatchScorer = Callable[[list], "tuple[np.ndarray, np.ndarray]"]


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


def scored_batches(images: Sequence[PathOrImage], scorer: BatchScorer, batch_size: int = 16, progress: bool = True,
                   description: str = "scoring", skip_unreadable: bool = False) -> Iterator[ScoredBatch]:
    """Yield `scorer`'s results batch by batch, so a whole test split never sits in memory at once.

    skip_unreadable: report files that cannot be decoded in `ScoredBatch.failures` and score the rest
    (default: raise the ImageReadError naming the file).
    """
    if batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size}; expected >= 1")
    with tqdm(total=len(images), desc=description, disable=not progress, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start: start + batch_size]
            indices, decoded, failures = _decode(chunk, start, skip_unreadable)
            if decoded:
                scores, maps = scorer(decoded)
            else:
                scores, maps = np.zeros(0, np.float32), np.zeros((0, 0, 0), np.float32)
            yield ScoredBatch(indices=indices, images=decoded, image_scores=scores, anomaly_maps=maps,
                              failures=failures)
            bar.update(len(chunk))
