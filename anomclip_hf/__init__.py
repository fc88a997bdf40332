"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models."""

from transformers import AutoConfig, AutoModel

from .configuration_anomclip import AnomCLIPConfig
from .modeling_anomclip import AnomCLIPModel, AnomCLIPOutput
from .processing_anomclip import AnomCLIPProcessor

__version__ = "0.1.0"

AutoConfig.register(AnomCLIPConfig.model_type, AnomCLIPConfig, exist_ok=True)
AutoModel.register(AnomCLIPConfig, AnomCLIPModel, exist_ok=True)

__all__ = ["AnomCLIPConfig", "AnomCLIPModel", "AnomCLIPOutput", "AnomCLIPProcessor", "__version__"]
