"""`TorchEngine`: a loaded AnomCLIPModel's category on PyTorch (fp32, or bf16/fp16 towers under autocast)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ...flags.numeric import check_output_size
from ...io.labels import pipeline_check_note
from ...model.precision import PrecisionChoice, resolve_precision
from ...model.processing_anomclip import model_inputs
from ..batch_scoring import score_pixel_values
from .base import Engine, EngineDescription, Preprocessing
from ...errors import ArgumentError


class TorchEngine(Engine):
    """model: an AnomCLIPModel with the category loaded; category: its name (default: the active one).
    precision: "fp32", "bf16", "fp16" or "auto" for the vision tower, resolved once here (`autocast_dtype`, a
    torch dtype or a PrecisionChoice, wins). output_size: the anomaly maps' side (default: the model input)."""

    def __init__(self, model, category: Optional[str] = None, *, precision: str = "fp32", autocast_dtype=None,
                 output_size: Optional[int] = None):
        self.model = model
        state = model.get_category(category)
        self.category = state.name
        self.output_size = check_output_size(output_size)
        if isinstance(autocast_dtype, PrecisionChoice) or autocast_dtype is None:
            self.precision = autocast_dtype or resolve_precision(precision, model.device, model=model)
        else:  # a torch dtype
            self.precision = autocast_dtype
        config = model.config
        memory = None
        if config.memory_backbone_config is not None:
            memory = Preprocessing(config.memory_image_size, tuple(config.memory_image_mean),
                                   tuple(config.memory_image_std), int(config.memory_image_resample))
        self._description = EngineDescription(
            name="torch", category=state.name, threshold=state.metadata.get("decision_threshold"),
            pixel_threshold=state.metadata.get("pixel_threshold"),
            preprocessing=Preprocessing(config.image_size, tuple(config.image_mean), tuple(config.image_std),
                                        int(config.image_resample)),
            memory_preprocessing=memory, note=pipeline_check_note(model),
            details={"device": str(model.device),
                     "precision": getattr(self.precision, "precision", str(self.precision))})

    @property
    def description(self) -> EngineDescription:
        return self._description

    def preprocess(self, images: Sequence[Image.Image]) -> dict:
        """{"pixel_values"} (+ "memory_pixel_values" for a DINOv2 memory) as CPU tensors."""
        return model_inputs(self.model.config, list(images))

    def score(self, pixel_batch) -> tuple[np.ndarray, np.ndarray]:
        return score_pixel_values(self.model, pixel_batch, self.category, self.output_size, self.precision)


class TiledTorchEngine(TorchEngine):
    """A tiled category (`model.tiling`): each image cut into tiles at its own resolution, the tiles scored in
    batches, one stitched map per image at the image's size. Its pixel batch is the decoded images themselves
    (the tiles are cut from them); maps are stacked when the batch's images share a size, else a list."""

    def __init__(self, model, category: Optional[str] = None, *, tiling, **options):
        super().__init__(model, category, **options)
        self.tiling = tiling
        self._description.details["tiling"] = tiling.describe()

    def preprocess(self, images: Sequence[Image.Image]) -> list:
        return list(images)

    def score(self, pixel_batch):
        from ...model.precision import tower_autocast
        from ...model.tiling import score_tiled

        if not isinstance(pixel_batch, list):
            raise ArgumentError(f"category {self.category!r} is tiled ({self.tiling.describe()}): it scores images, cut "
                             "into tiles at their own resolution, not pixel values preprocessed to the tower's size")
        with tower_autocast(self.precision, self.model.device):
            scores, maps = score_tiled(self.model, pixel_batch, self.tiling, self.category)
        return scores, (np.stack(maps) if len({m.shape for m in maps}) == 1 else maps)
