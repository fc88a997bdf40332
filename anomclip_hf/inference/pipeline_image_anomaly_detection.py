"""The transformers pipeline "image-anomaly-detection", registered when this module is imported (which
`import anomclip_hf` arranges once transformers' pipelines are imported).

```python
import anomclip_hf  # registers the task
from transformers import pipeline

detector = pipeline("image-anomaly-detection", model="path/to/anomclip-base", category="path/or/repo-of-adapter")
detector(["a.png", "b.png"], batch_size=8)  # precision="auto": bf16 towers where the CPU/GPU runs it natively
# [{"score": 0.41, "decision": "anomalous", "threshold": 0.3, "anomaly_map": array(H, W)}, ...]
```

`model` is an AnomCLIP base (folder, Hub id or a loaded AnomCLIPModel); `category` is the name of a
loaded category, or an adapter folder / Hub repo id that is loaded once.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from ..flags.numeric import check_output_size
from ..model.decisions import check_threshold
from ..model.devices import resolve_device
from ..model.modeling_anomclip import AnomCLIPModel
from ..model.precision import resolve_precision
from ..model.processing_anomclip import AnomCLIPProcessor
from .inputs import decode
from .predictor import Predictor

TASK = "image-anomaly-detection"


class ImageAnomalyDetectionPipeline(Pipeline):
    """Image score, decision and anomaly map per image, for one category of an AnomCLIPModel."""

    # The model brings its own preprocessing; nothing is loaded from the checkpoint folder.
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, model, feature_extractor=None, **kwargs):
        self._loaded_categories: dict[str, str] = {}  # adapter folder / repo id -> category name
        self._predictors: dict[tuple, Predictor] = {}  # (category, output_size, precision) -> built once
        device = kwargs.get("device")
        if device is not None and not (isinstance(device, int) and device < 0):  # -1: transformers' CPU
            kwargs["device"] = resolve_device(device)  # a clear error, not torch's RuntimeError
        # The processor is the pipeline's feature extractor: transformers only batches pipelines that have
        # one (pixel_values of one size are concatenated, no padding).
        super().__init__(model, feature_extractor=feature_extractor or AnomCLIPProcessor.from_model(model), **kwargs)

    def _sanitize_parameters(self, category: Optional[str] = None, threshold: Optional[float] = None,
                             output_size: Optional[int] = None, precision: Optional[str] = None, **kwargs):
        if kwargs:
            raise TypeError(f"{TASK} pipeline: unexpected arguments {sorted(kwargs)}; expected category, threshold, "
                            "output_size, precision, batch_size")
        forward, postprocess = {}, {}
        if category is not None:
            forward["category"] = self._resolve_category(category)
        if output_size is not None:
            forward["output_size"] = check_output_size(output_size)
        if precision is not None:  # resolved once here, not per image
            forward["precision"] = resolve_precision(precision, self.model.device, self.model)
        if threshold is not None:  # NaN would call every image normal, 0 or less every one anomalous
            postprocess["threshold"] = check_threshold(threshold)
        return {}, forward, postprocess

    def _resolve_category(self, category: str) -> str:
        """A loaded category's name as is; otherwise an adapter folder / Hub repo id, loaded once."""
        if category in self.model.categories:
            return category
        if category not in self._loaded_categories:
            self._loaded_categories[category] = self.model.load_category(category, activate=False).name
        return self._loaded_categories[category]

    def _predictor(self, category: Optional[str], output_size: Optional[int] = None, precision=None) -> Predictor:
        """The Predictor of these settings, built on first use and kept (one per category and settings)."""
        state = self.model.get_category(category)
        name = state.name
        key = (name, id(state), output_size, precision)  # a category loaded again gets a new Predictor
        if key not in self._predictors:
            self._predictors[key] = Predictor.from_model(self.model, name, autocast_dtype=precision,
                                                         output_size=output_size, decode_workers=0)
        return self._predictors[key]

    def preprocess(self, image):
        inputs = self.feature_extractor(images=[decode(image)])  # + memory_pixel_values for a DINO memory
        return {key: inputs[key] for key in ("pixel_values", "memory_pixel_values") if key in inputs}

    def _forward(self, model_inputs, category: Optional[str] = None, output_size: Optional[int] = None,
                 precision=None):
        predictor = self._predictor(category, output_size, precision)
        # float32 scores and maps (scoring.py); memory_pixel_values too where the model has a DINOv2 memory
        scores, maps = predictor.score_pixel_values({key: value for key, value in model_inputs.items()
                                                     if key in ("pixel_values", "memory_pixel_values")})
        # Plain tensors with the batch first, so the pipeline can split a batch into items.
        return {"image_scores": torch.from_numpy(scores), "anomaly_maps": torch.from_numpy(maps),
                "category": [predictor.category] * scores.shape[0]}

    def postprocess(self, model_outputs, threshold: Optional[float] = None):
        name = model_outputs["category"][0] if isinstance(model_outputs["category"], list) else model_outputs["category"]
        outcome = self._predictor(name).outcome(
            float(model_outputs["image_scores"].reshape(-1)[0]), threshold)
        anomaly_map = model_outputs["anomaly_maps"].float().cpu()
        return {**outcome, "decision": outcome["decision"] or None,
                "anomaly_map": anomaly_map.reshape(anomaly_map.shape[-2:]).numpy()}


def register_pipeline() -> None:
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ImageAnomalyDetectionPipeline,
                                            pt_model=AnomCLIPModel, type="image")


register_pipeline()  # on import: `from anomclip_hf import ...` makes pipeline("image-anomaly-detection") work
