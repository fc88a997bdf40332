"""Scoring with a loaded model: the batched scoring loop, predictions written to a folder (scores.csv,
overlays, maps), overlays, and the transformers pipeline. Uses `model`, `io`, `hub`, `memory`, `data` and
`export` (the ONNX runtime); never imported by them.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"score_images": "batch_scoring", "predict_folder": "prediction", "predict_files": "prediction",
            "Predictor": "predictor", "Prediction": "predictor",
            "ImageAnomalyDetectionPipeline": "pipeline_image_anomaly_detection"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
