"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models.

Importing the package is cheap (the `anomclip` command line starts at once): a plain lazy module whose public
names load torch and transformers on first use. Each class registers itself with transformers where it is
defined (AutoConfig, AutoModel, AutoProcessor, the pipeline task "image-anomaly-detection"); the first public
name used loads all four, so after `from anomclip_hf import AnomCLIPModel` (or any other public name)
`AutoModel.from_pretrained(...)` and `pipeline("image-anomaly-detection", ...)` know AnomCLIP.
"""

from __future__ import annotations

import importlib

from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {"AnomCLIPConfig": "model.configuration_anomclip", "AnomCLIPModel": "model.modeling_anomclip",
            "AnomCLIPOutput": "model.modeling_anomclip", "AnomCLIPProcessor": "model.processing_anomclip",
            "ImageAnomalyDetectionPipeline": "inference.pipeline_image_anomaly_detection"}
# The modules whose import registers a class with transformers (each registers what it defines).
_REGISTERING = ("model.configuration_anomclip", "model.modeling_anomclip", "model.processing_anomclip",
                "inference.pipeline_image_anomaly_detection")

__all__ = [*_EXPORTS, "__version__"]

_load, __dir__ = lazy_exports(globals(), _EXPORTS)


def __getattr__(name: str):
    value = _load(name)
    for module in _REGISTERING:
        importlib.import_module(f".{module}", __name__)
    return value
