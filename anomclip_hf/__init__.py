"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from ._version import __version__
from .configuration_anomclip import AnomCLIPConfig
from .modeling_anomclip import AnomCLIPModel, AnomCLIPOutput
from .pipeline_image_anomaly_detection import ImageAnomalyDetectionPipeline, register_pipeline
from .processing_anomclip import AnomCLIPProcessor


AutoConfig.register(AnomCLIPConfig.model_type, AnomCLIPConfig, exist_ok=True)
AutoModel.register(AnomCLIPConfig, AnomCLIPModel, exist_ok=True)
AutoProcessor.register(AnomCLIPConfig, AnomCLIPProcessor, exist_ok=True)  # AutoProcessor.from_pretrained(base)
register_pipeline()  # pipeline("image-anomaly-detection", model=..., category=...)

__all__ = ["AnomCLIPConfig", "AnomCLIPModel", "AnomCLIPOutput", "AnomCLIPProcessor", "ImageAnomalyDetectionPipeline",
           "__version__"]
