"""`ExportedModelEngine`: the common part of every runtime that runs the exported graph (`anomclip export`):
the sidecar, the numpy preprocessing and the checks of the graph's inputs live in the torch-free detector
(`export.runtime.OnnxAnomalyDetector`); a runtime subclass names the detector class that loads and runs it."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ...export.runtime import OnnxAnomalyDetector
from .base import Engine, EngineDescription, Preprocessing


def _preprocessing(values: tuple) -> Preprocessing:
    size, mean, std, resample = values
    return Preprocessing(int(size), tuple(mean), tuple(std), int(resample))


class ExportedModelEngine(Engine):
    """path: the .onnx file (its sidecar beside it); threshold: overrides the stored decision threshold;
    `runtime_options` go to the detector (e.g. providers for ONNX Runtime)."""

    name_of_runtime = "exported"
    detector_class = OnnxAnomalyDetector

    def __init__(self, path: str, *, threshold: Optional[float] = None, **runtime_options):
        self.detector = self.detector_class(path, threshold=threshold, **runtime_options)
        detector = self.detector
        self._description = EngineDescription(
            name=self.name_of_runtime, category=detector.category, threshold=detector.threshold,
            pixel_threshold=detector.pixel_threshold,
            preprocessing=_preprocessing((detector.image_size, detector.mean, detector.std, detector.resample)),
            memory_preprocessing=(None if detector.memory_preprocessing is None
                                  else _preprocessing(detector.memory_preprocessing)),
            note=detector.note, details={"path": detector.path, **{k: v for k, v in runtime_options.items()
                                                                   if isinstance(v, (str, list, tuple))}})

    @property
    def description(self) -> EngineDescription:
        return self._description

    def preprocess(self, images: Sequence[Image.Image]):
        return self.detector.preprocess(list(images))

    def score(self, pixel_batch) -> tuple[np.ndarray, np.ndarray]:
        # Unchecked: the Predictor checks each image's outputs, so one NaN image fails alone.
        return self.detector.run_unchecked(pixel_batch)
