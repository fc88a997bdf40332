"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models.

Importing the package is cheap (the `anomclip` command line starts at once): the public names load torch and
transformers on first use. AnomCLIP is registered with AutoConfig/AutoModel/AutoProcessor and as the pipeline task
"image-anomaly-detection" once transformers' auto classes or pipelines are imported (`_registration`), so
`import anomclip_hf` followed by `AutoModel.from_pretrained(...)` or `pipeline("image-anomaly-detection", ...)`
works. The package is arranged by job (README, "Layout"); the module paths of 0.1 still import
(`_legacy_paths`).
"""

from __future__ import annotations

from . import _legacy_paths, _registration
from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {"AnomCLIPConfig": "model.configuration_anomclip", "AnomCLIPModel": "model.modeling_anomclip",
            "AnomCLIPOutput": "model.modeling_anomclip", "AnomCLIPProcessor": "model.processing_anomclip",
            "ImageAnomalyDetectionPipeline": "inference.pipeline_image_anomaly_detection"}

__all__ = [*_EXPORTS, "__version__"]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

_legacy_paths.install()
_registration.install()
