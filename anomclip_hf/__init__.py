"""anomclip-hf: PromptAD few-shot anomaly detection on Hugging Face CLIP models."""

import importlib.util

__version__ = "0.1.0"

# Without torch or transformers (a deployment box with only onnxruntime), the package still imports, so the
# torch-free parts (anomclip_hf.export.runtime) work; the model classes then need the full install.
if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None:
    from transformers import AutoConfig, AutoModel

    from .configuration_anomclip import AnomCLIPConfig
    from .modeling_anomclip import AnomCLIPModel, AnomCLIPOutput
    from .pipeline_image_anomaly_detection import ImageAnomalyDetectionPipeline, register_pipeline
    from .processing_anomclip import AnomCLIPProcessor

    AutoConfig.register(AnomCLIPConfig.model_type, AnomCLIPConfig, exist_ok=True)
    AutoModel.register(AnomCLIPConfig, AnomCLIPModel, exist_ok=True)
    register_pipeline()  # pipeline("image-anomaly-detection", model=..., category=...)
else:
    def __getattr__(name: str):
        if name in __all__:
            raise ImportError(f"anomclip_hf.{name} needs torch and transformers (pip install anomclip-hf); this "
                              "environment has only the torch-free parts, e.g. anomclip_hf.export.OnnxAnomalyDetector")
        raise AttributeError(f"module 'anomclip_hf' has no attribute {name!r}")

__all__ = ["AnomCLIPConfig", "AnomCLIPModel", "AnomCLIPOutput", "AnomCLIPProcessor", "ImageAnomalyDetectionPipeline",
           "__version__"]
