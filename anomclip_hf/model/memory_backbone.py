"""The optional DINOv2 visual memory of an AnomCLIPModel (the memory itself: `memory.dino`), as functions of the
model, which holds the tower as `model.memory_backbone` (so its weights keep their keys in a saved base).

With `config.memory_backbone_config` set, a DINOv2 tower encodes the images a second time, at
`config.memory_image_size` with its own normalisation (`memory_pixel_values`), and its patch tokens replace
CLIP's memory taps: the memory bank holds them, a patch scores its cosine distance 1 - cos to the nearest
reference patch, an image the mean of its top 1 % patch distances (AnomalyDINO). Without one, nothing here
changes what the CLIP memory computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ArgumentError, ConfigurationError
from ..io.pixel_arrays import BICUBIC
from ..memory.dino import (
    dino_identity,
    dino_model_from_config,
    dino_patch_features,
    load_dino_backbone,
    patch_grid,
    top_fraction_mean,
)
from ..memory.dino_settings import IMAGENET_MEAN, IMAGENET_STD
from .dtypes import resolve_compute_dtype
from .processing_anomclip import checkpoint_preprocessing
from .scoring import dino_memory_scores

# The DINO memory is one "layer": the final LayerNorm'd tokens, recorded in category.json under this tap.
DINO_MEMORY_TAP = "dinov2_final_norm"


@dataclass(frozen=True)
class MemoryLayout:
    """What a memory bank is made of on this base: its layers (file keys), tap, width and patches per image."""

    layers: tuple
    tap: str
    width: int
    num_patches: int


def build_memory_backbone(config) -> Optional[nn.Module]:
    """The tower a saved base describes (its weights come with the base), or None (CLIP's own memory taps)."""
    if config.memory_backbone_config is None and config.memory_backbone is not None:
        raise ConfigurationError(f"the config names memory_backbone {config.memory_backbone!r} but has no "
                                 "memory_backbone_config: build the model with AnomCLIPModel.from_clip(..., "
                                 "memory_backbone=...) or from_base(..., memory_backbone=...), which load it")
    if config.memory_backbone_config is None:
        return None
    return dino_model_from_config(config.memory_backbone_config).requires_grad_(False)


def attach_memory_backbone(model, backbone: Union[str, os.PathLike, nn.Module], revision: Optional[str] = None,
                           image_size: Optional[int] = None, torch_dtype=None) -> None:
    """See `AnomCLIPModel.attach_memory_backbone`."""
    if len(model.category_bank):
        raise ConfigurationError(f"attach_memory_backbone with categories {model.categories} loaded: their memory "
                                 "banks were built with the current memory; attach the memory backbone first")
    module = load_dino_backbone(backbone, revision)
    name = None if isinstance(backbone, nn.Module) else os.fspath(backbone)
    name = name or getattr(module.config, "name_or_path", None) or None
    size = int(image_size or model.config.memory_image_size)
    patch_grid(module, size)  # refuses a size that is not a multiple of the patch, before anything changes
    preprocessing = checkpoint_preprocessing(name, revision=revision) if name else {}
    config = model.config
    config.memory_backbone, config.memory_backbone_revision = name, revision
    config.memory_backbone_config = module.config.to_dict()
    config.memory_image_size = size
    defaults = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "image_resample": BICUBIC}
    for key, default in defaults.items():  # its processor's values, else DINOv2's (ImageNet, bicubic)
        setattr(config, f"memory_{key}", preprocessing.get(key, default))
    dtype = resolve_compute_dtype(module.dtype, model.device, torch_dtype)
    model.memory_backbone = module.requires_grad_(False).to(model.device, dtype).eval()


def memory_backbone_identity(model) -> Optional[dict]:
    """category.json "memory"."backbone": which DINOv2 memory an adapter's bank was built with (or None)."""
    if model.memory_backbone is None:
        return None
    config = model.config
    return dino_identity(model.memory_backbone, config.memory_backbone, config.memory_backbone_revision,
                         config.memory_image_size)


def memory_layout(model) -> MemoryLayout:
    """The memory bank's layers, tap, width and patch count on this base (CLIP taps or the DINO tokens)."""
    config = model.config
    if model.memory_backbone is not None:
        dino = model.memory_backbone.config
        side = patch_grid(model.memory_backbone, config.memory_image_size)
        return MemoryLayout((dino.num_hidden_layers - 1,), DINO_MEMORY_TAP, dino.hidden_size, side * side)
    vision = config.clip_config.vision_config
    return MemoryLayout(tuple(config.memory_layers), config.memory_tap, vision.hidden_size,
                        (vision.image_size // vision.patch_size) ** 2)


def check_memory_pixel_values(config, memory_pixel_values: Optional[torch.Tensor], batch: int) -> None:
    """Refuse memory pixels that are missing, of the wrong shape, or not finite (the message says what fits)."""
    size = config.memory_image_size
    expected = f"(batch {batch}, 3, {size}, {size})"
    if memory_pixel_values is None:
        raise ArgumentError(f"this model's visual memory is the DINOv2 model {config.memory_backbone!r}: pass "
                         f"memory_pixel_values {expected} too (AnomCLIPProcessor.from_model(model) makes both, "
                         "or processing_anomclip.model_inputs)")
    if not isinstance(memory_pixel_values, torch.Tensor) or memory_pixel_values.ndim != 4 or \
            tuple(memory_pixel_values.shape) != (batch, 3, size, size):
        shape = tuple(getattr(memory_pixel_values, "shape", ()))
        raise ArgumentError(f"memory_pixel_values has shape {shape}; expected {expected} for the memory backbone "
                         f"{config.memory_backbone!r} at memory_image_size {size}")
    if not torch.compiler.is_exporting() and not torch.isfinite(memory_pixel_values).all():
        raise ArgumentError(f"memory_pixel_values contains {int((~torch.isfinite(memory_pixel_values)).sum())} "
                         "NaN or infinite values")


def encode_memory(model, memory_pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, P, W) unit DINOv2 patch features of `memory_pixel_values` (float32)."""
    check_memory_pixel_values(model.config, memory_pixel_values, memory_pixel_values.shape[0])
    return dino_patch_features(model.memory_backbone, memory_pixel_values.to(model.device))


def dino_memory_terms(memory_features: Sequence[torch.Tensor], memory_bank: Sequence[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_dino per patch (B, P), memory image score (B,)) of the DINOv2 memory (AnomalyDINO): the cosine
    distance 1 - cos to the nearest reference patch, and the mean of each image's top 1 % of them."""
    patch = dino_memory_scores(memory_features[0], memory_bank[0])
    return patch, top_fraction_mean(patch)
