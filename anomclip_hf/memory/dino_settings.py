"""The DINOv2 memory's settings and checks, torch-free (the config, the CLI and the ONNX runtime use them)."""

from __future__ import annotations

from typing import Mapping, Optional
from ..errors import ConfigurationError

# model_type -> (position-table interpolation offset, antialias): the released DINOv2 hub models' settings.
DINO_MODEL_TYPES = {"dinov2": (0.1, False), "dinov2_with_registers": (0.0, True)}
DEFAULT_MEMORY_IMAGE_SIZE = 448  # AnomalyDINO's default resolution (a 32 x 32 grid at patch 14)
TOP_FRACTION = 0.01  # the image score: the mean of the top 1 % patch distances
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's normalisation when a checkpoint has no preprocessor_config.json
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_dino_config(config_dict: Mapping, source: str) -> None:
    """Refuse a checkpoint that is not a DINOv2 model (by its config.json model_type), naming both."""
    model_type = config_dict.get("model_type")
    if model_type not in DINO_MODEL_TYPES:
        raise ConfigurationError(f"memory backbone {source}: config.json has model_type {model_type!r}; the memory backbone "
                         f"must be a DINOv2 model (model_type one of {sorted(DINO_MODEL_TYPES)}, e.g. "
                         "facebook/dinov2-small or facebook/dinov2-with-registers-small)")


def describe_memory_backbone(identity: Optional[Mapping]) -> str:
    """One line naming a memory backbone identity (or its absence) for error messages."""
    if not identity:
        return "none (the CLIP memory)"
    arch = identity.get("architecture") or {}
    return (f"{identity.get('name_or_path')!r} ({identity.get('model_type')}, width {arch.get('hidden_size')}, "
            f"{arch.get('layers')} layers, patch {arch.get('patch_size')}, at {arch.get('image_size')} px, "
            f"fingerprint {identity.get('fingerprint')})")
