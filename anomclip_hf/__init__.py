"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models.

Importing the package is cheap (the `anomclip` command line starts at once): the public names load torch and
transformers on first use. AnomCLIP is registered with AutoConfig/AutoModel/AutoProcessor and as the pipeline task
"image-anomaly-detection" once transformers' auto classes or pipelines are imported (`_registration`), so
`import anomclip_hf` followed by `AutoModel.from_pretrained(...)` or `pipeline("image-anomaly-detection", ...)`
works.
"""

from __future__ import annotations

from . import _registration
from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {"AnomCLIPConfig": "configuration_anomclip", "AnomCLIPModel": "modeling_anomclip",
            "AnomCLIPOutput": "modeling_anomclip", "AnomCLIPProcessor": "processing_anomclip",
            "ImageAnomalyDetectionPipeline": "pipeline_image_anomaly_detection"}

__all__ = [*_EXPORTS, "__version__"]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

_registration.install()
