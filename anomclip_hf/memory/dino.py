"""A DINOv2 visual memory: the patch memory of AnomalyDINO (Damm et al., 2024) in place of CLIP's.

A transformers `Dinov2Model` or `Dinov2WithRegistersModel` (e.g. facebook/dinov2-small, -base, -large, or
facebook/dinov2-with-registers-*) encodes images at its own resolution with its own normalisation. Its final
LayerNorm'd patch tokens (class and register tokens dropped), L2-normalised, are the memory bank; a test patch
scores its cosine distance 1 - cos to the nearest reference patch, and an image scores the mean of its top 1 %
patch distances (the largest one when there are fewer than 100 patches), as AnomalyDINO's reference code does.

The forward is the original DINOv2's, on the transformers module's own weights: at a patch grid other than
the checkpoint's position table, the table is resized bicubically with the settings of the released DINOv2 hub
models (plain models: scale factor (n + 0.1) / N, no antialiasing; models with registers: size n, antialiased).
transformers' `Dinov2Model.forward` resizes plain models to size n instead, which differs from the features
AnomalyDINO was run with by about 1e-4 (tests/test_dino_memory.py compares both).
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .dino_settings import DINO_MODEL_TYPES, TOP_FRACTION, check_dino_config
from .search import nearest_similarity
from ..errors import ConfigurationError


def dino_config_class(model_type: str):
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    return {"dinov2": Dinov2Config, "dinov2_with_registers": Dinov2WithRegistersConfig}[model_type]


def dino_model_from_config(config_dict: Mapping) -> nn.Module:
    """An (uninitialised-weight) DINOv2 module of a stored config dict: a saved base rebuilds its tower so."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    check_dino_config(config_dict, "(saved config)")
    config = dino_config_class(config_dict["model_type"]).from_dict(dict(config_dict))
    cls = Dinov2Model if config.model_type == "dinov2" else Dinov2WithRegistersModel
    return cls(config).eval()


def load_dino_backbone(name_or_path, revision: Optional[str] = None) -> nn.Module:
    """A DINOv2 tower from a Hub id or folder (or a loaded module, checked), in float32 and eval mode; the
    config is checked before any weight is read."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel, PretrainedConfig

    if isinstance(name_or_path, nn.Module):
        check_dino_config(getattr(name_or_path, "config", None).to_dict() if hasattr(name_or_path, "config") else {},
                          type(name_or_path).__name__)
        return name_or_path.eval()
    source = os.fspath(name_or_path)
    config_dict, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    check_dino_config(config_dict, source)
    cls = Dinov2Model if config_dict["model_type"] == "dinov2" else Dinov2WithRegistersModel
    return cls.from_pretrained(source, revision=revision, dtype=torch.float32).eval()


def patch_grid(backbone: nn.Module, image_size: int) -> int:
    """The side of the square patch grid at `image_size` pixels (which must be a multiple of the patch)."""
    patch = int(backbone.config.patch_size)
    if image_size % patch:
        raise ConfigurationError(f"memory_image_size={image_size} is not a multiple of the memory backbone's patch size "
                         f"{patch}; use e.g. {image_size - image_size % patch or patch}")
    return image_size // patch


def _position_embeddings(backbone: nn.Module, rows: int, cols: int) -> torch.Tensor:
    """(1, 1 + rows * cols, W) position embeddings for a rows x cols grid, as the original DINOv2 resizes them."""
    table = backbone.embeddings.position_embeddings
    positions = table.shape[1] - 1
    side = math.isqrt(positions)
    if rows == cols == side:
        return table
    offset, antialias = DINO_MODEL_TYPES[backbone.config.model_type]
    grid = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    size = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)} if offset else {"size": (rows, cols)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(table.dtype)
    return torch.cat([table[:, :1], grid], dim=1)


def dino_patch_features(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, P, W) L2-normalised float32 patch tokens after the final LayerNorm (class and registers dropped).

    pixel_values: (B, 3, S, S) with S a multiple of the patch size (cast to the tower's dtype here)."""
    embeddings = backbone.embeddings
    dtype = embeddings.patch_embeddings.projection.weight.dtype
    pixel_values = pixel_values.to(embeddings.cls_token.device, dtype)
    patch = int(backbone.config.patch_size)
    rows, cols = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
    tokens = embeddings.patch_embeddings(pixel_values)
    tokens = torch.cat([embeddings.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    tokens = tokens + _position_embeddings(backbone, rows, cols)
    registers = getattr(embeddings, "register_tokens", None)
    skip = 1
    if registers is not None:
        skip += registers.shape[1]
        tokens = torch.cat([tokens[:, :1], registers.expand(tokens.shape[0], -1, -1), tokens[:, 1:]], dim=1)
    hidden = backbone.encoder(tokens)[0]  # a ModelOutput (5.x) or a tuple (4.x): its first field either way
    return F.normalize(backbone.layernorm(hidden)[:, skip:].float(), dim=-1)


def top_fraction_mean(distances: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """(B,) mean of the top `fraction` of each row of (B, P) patch distances; the max below 1 / fraction patches."""
    count = int(distances.shape[-1] * fraction)
    if count == 0:
        return distances.amax(dim=-1)
    return distances.topk(count, dim=-1).values.mean(dim=-1)


def dino_identity(backbone: nn.Module, name_or_path: Optional[str], revision: Optional[str],
                  image_size: int) -> dict:
    """What an adapter records about its memory backbone (compared, key by key, when it is loaded)."""
    config = backbone.config
    digest = hashlib.sha256()
    embeddings = backbone.embeddings
    for tensor in (embeddings.patch_embeddings.projection.weight, embeddings.cls_token, backbone.layernorm.weight,
                   backbone.layernorm.bias):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return {"name_or_path": name_or_path, "revision": revision, "model_type": config.model_type,
            "architecture": {"hidden_size": config.hidden_size, "layers": config.num_hidden_layers,
                             "patch_size": config.patch_size,
                             "register_tokens": int(getattr(config, "num_register_tokens", 0) or 0),
                             "image_size": int(image_size)},
            "fingerprint": digest.hexdigest()[:16]}


def dino_patch_distances(features: torch.Tensor, bank: torch.Tensor, *, shortlist: bool = False,
                         low_bank: Optional[torch.Tensor] = None, max_block_elements: int = 1 << 22) -> torch.Tensor:
    """(B, P) cosine distance 1 - cos of each unit patch feature (B, P, W) to its nearest bank row (..., W): the
    memory's own nearest-neighbour search (`search.nearest_similarity`), float32 also under autocast."""
    with torch.autocast(features.device.type, enabled=False):
        flat = features.reshape(-1, features.shape[-1]).float()
        rows = bank.reshape(-1, bank.shape[-1]).to(flat)
        nearest = nearest_similarity(flat, rows, shortlist=shortlist, low_bank=low_bank,
                                     max_block_elements=max_block_elements)
        return (1.0 - nearest).reshape(features.shape[:-1]).clamp(0.0, 2.0)
