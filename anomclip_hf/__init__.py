"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models.

Importing the package is cheap (the `anomclip` command line starts at once): the public names load torch and
transformers on first use. Using any of them also registers AnomCLIP with AutoConfig/AutoModel (done by
modeling_anomclip) and the pipeline task "image-anomaly-detection" (done by pipeline_image_anomaly_detection).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {"AnomCLIPConfig": "configuration_anomclip", "AnomCLIPModel": "modeling_anomclip",
            "AnomCLIPOutput": "modeling_anomclip", "AnomCLIPProcessor": "processing_anomclip",
            "ImageAnomalyDetectionPipeline": "pipeline_image_anomaly_detection"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(".pipeline_image_anomaly_detection", __name__)  # registers model, config and task
    value = getattr(importlib.import_module("." + _EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
