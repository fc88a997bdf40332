"""Scoring many images in batches with the PyTorch model (predict, demo and evaluation share this loop)."""

from __future__ import annotations

from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..flags.numeric import check_output_size
from ..io.batches import ScoredBatch, scored_batches
from ..io.image_io import PathOrImage
from ..model.modeling_anomclip import AnomCLIPModel
from ..model.precision import resolve_precision, tower_autocast
from ..model.processing_anomclip import model_inputs

__all__ = ["ScoredBatch", "score_images", "score_pixel_values", "score_tiled_images"]


def score_pixel_values(model: AnomCLIPModel, pixel_values: Union[torch.Tensor, Mapping[str, torch.Tensor]],
                       category: Optional[str] = None, output_size: Optional[int] = None, autocast_dtype=None,
                       mode: Optional[str] = None) -> tuple:
    """(image scores (B,), anomaly maps (B, H, W)) as float32 numpy arrays of preprocessed pixel values: the
    one model call of every scorer (this loop, `Predictor`, the pipeline). pixel_values: a tensor, or the
    processor's dict (`model_inputs`: with "memory_pixel_values" for a DINOv2 memory). `autocast_dtype`: a
    torch dtype or a `PrecisionChoice` for the vision tower; scores and maps stay float32."""
    inputs = dict(pixel_values) if isinstance(pixel_values, Mapping) else {"pixel_values": pixel_values}
    with torch.inference_mode(), tower_autocast(autocast_dtype, model.device):
        out = model(**{key: value.to(model.device) for key, value in inputs.items()}, category=category,
                    output_size=output_size, mode=mode)
    return out.image_scores.float().cpu().numpy(), out.anomaly_maps.float().cpu().numpy()


def score_images(model: AnomCLIPModel, images: Sequence[PathOrImage], batch_size: int = 16, output_size: Optional[int] = None,
                 category: Optional[str] = None, progress: bool = True, description: str = "scoring",
                 skip_unreadable: bool = False, autocast_dtype: Optional[torch.dtype] = None,
                 precision: str = "fp32", mode: Optional[str] = None) -> Iterator[ScoredBatch]:
    """Yield scores batch by batch (see `batches.scored_batches`).

    skip_unreadable: report files that cannot be decoded in `ScoredBatch.failures` and score the rest
    (default: raise the ImageReadError naming the file).
    precision: "fp32", "bf16", "fp16" or "auto" (see `precision`): the vision tower runs under autocast; the
    memory distances, text scores and maps stay float32. `autocast_dtype` (a torch dtype) is the older
    spelling and wins when given. mode: the model's scoring mode ("full", "memory", "text"; default: its own).
    """
    check_output_size(output_size)
    low = autocast_dtype if autocast_dtype is not None else resolve_precision(precision, model.device, model)

    def score(decoded: list):
        return score_pixel_values(model, model_inputs(model.config, decoded), category, output_size, low, mode)

    return scored_batches(images, score, batch_size=batch_size, progress=progress, description=description,
                          skip_unreadable=skip_unreadable)


def score_tiled_images(model: AnomCLIPModel, images: Sequence[PathOrImage], tiling, batch_size: int = 16,
                       category: Optional[str] = None, progress: bool = True, description: str = "scoring tiles",
                       skip_unreadable: bool = False, autocast_dtype=None, mode: Optional[str] = None
                       ) -> Iterator[ScoredBatch]:
    """`score_images` at native resolution (`model.tiling`, a `io.tiling.TilingSpec`): each image cut into
    tiles, scored in batches of tiles, stitched into one map at the image's size. Maps of a batch are stacked
    when the images share a size, else a list (one per image)."""
    from ..model.tiling import score_tiled

    def score(decoded: list):
        with tower_autocast(autocast_dtype, model.device):
            scores, maps = score_tiled(model, decoded, tiling, category, mode)
        return scores, (np.stack(maps) if len({m.shape for m in maps}) == 1 else maps)

    return scored_batches(images, score, batch_size=batch_size, progress=progress, description=description,
                          skip_unreadable=skip_unreadable)
