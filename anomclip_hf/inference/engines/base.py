"""The engine interface (torch-free): what every runtime answers; see the package docstring."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """How images become pixel values: resize to image_size x image_size with `resample` (a PIL filter
    number), then (x / 255 - mean) / std per channel."""

    image_size: int
    mean: tuple
    std: tuple
    resample: int


@dataclass(frozen=True)
class EngineDescription:
    """What an engine scores with: its runtime, the category and its stored thresholds (None: not stored), the
    preprocessing (and the DINOv2 memory's, when it has one), the PIPELINE CHECK note of a random base."""

    name: str  # "torch", "onnxruntime", ...
    category: Optional[str]
    threshold: Optional[float]
    pixel_threshold: Optional[float]
    preprocessing: Preprocessing
    memory_preprocessing: Optional[Preprocessing] = None
    note: str = ""
    details: dict = field(default_factory=dict)  # runtime specifics: precision, providers, the file path

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size


class Engine(ABC):
    """One category on one runtime. Implementations keep their loaded state; `Predictor` calls only these."""

    @property
    @abstractmethod
    def description(self) -> EngineDescription:
        """The runtime, category, stored thresholds and preprocessing (see EngineDescription)."""

    @property
    def name(self) -> str:
        return self.description.name

    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """The pixel batch of decoded RGB PIL images, in this engine's own type (a tensor or dict of them for
        torch, numpy arrays for the exported graph)."""

    @abstractmethod
    def score(self, pixel_batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """(image_scores (B,), anomaly_maps (B, H, W)) as float32 numpy arrays of a pixel batch."""

    def score_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """`score(preprocess(images))`."""
        return self.score(self.preprocess(images))

    def __repr__(self) -> str:
        info = self.description
        return f"{type(self).__name__}(category={info.category!r}, image_size={info.image_size})"
