"""Scoring with a loaded model: the Predictor (one engine: PyTorch or an exported graph, `engines/`), the
inputs it reads (`inputs`), what it writes (`writers`: scores.csv, overlays, maps, errors.csv, the run
manifest), overlays (`visualization`), the PyTorch batch loop of evaluation, and the transformers pipeline.
Uses `model`, `io`, `hub`, `memory`, `data` and `export` (the ONNX runtime); never imported by them.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"score_images": "batch_scoring", "predict_folder": "predictor", "predict_files": "predictor",
            "Predictor": "predictor", "Prediction": "predictor", "PredictorSpec": "predictor",
            "PredictionResult": "writers",
            "ImageAnomalyDetectionPipeline": "pipeline_image_anomaly_detection"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
