"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models.

Importing the package is cheap (the `anomclip` command line starts at once): the public names load torch and
transformers on first use. AnomCLIP is registered with AutoConfig/AutoModel/AutoProcessor and as the pipeline task
"image-anomaly-detection" once transformers' auto classes or pipelines are imported (`_registration`), or when
any public name is used, so `import anomclip_hf` followed by `AutoModel.from_pretrained(...)` or
`pipeline("image-anomaly-detection", ...)` works.
"""

from __future__ import annotations

import importlib

from . import _registration
from ._version import __version__

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


_registration.install()
