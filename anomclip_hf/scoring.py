"""Scores of PromptAD (spec section 5): visual memory, text scores, fusion, maps and image scores."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def memory_patch_scores(memory_features: Sequence[torch.Tensor], memory_bank: Sequence[torch.Tensor],
                        chunk_size: int = 4096) -> torch.Tensor:
    """s_vis per patch (B, P): mean over layers of the min over the bank of (1 - cos) / 2.

    memory_features: per layer (B, P, W) unit vectors; memory_bank: per layer (K, W) unit vectors.
    Exact nearest neighbour, computed in bank chunks so memory stays bounded for large k.
    """
    if len(memory_features) != len(memory_bank):
        raise ValueError(f"{len(memory_features)} feature layers but {len(memory_bank)} memory layers")
    per_layer = []
    for features, bank in zip(memory_features, memory_bank):
        flat = features.reshape(-1, features.shape[-1])
        best = torch.full((flat.shape[0],), -math.inf, dtype=flat.dtype, device=flat.device)
        for start in range(0, bank.shape[0], chunk_size):
            chunk = bank[start: start + chunk_size].to(flat)
            best = torch.maximum(best, (flat @ chunk.T).max(dim=1).values)
        per_layer.append(((1.0 - best) / 2.0).reshape(features.shape[:-1]))
    return torch.stack(per_layer).mean(dim=0).clamp(0.0, 1.0)


def text_anomaly_probability(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(tau * [v.n, v.a])[1] for unit features (..., D) and prototypes (2, D) = [normal, anomaly]."""
    logits = temperature * features @ prototypes.T.to(features)
    return logits.softmax(dim=-1)[..., 1]


def harmonic_fusion(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h(a, b) = ab / (a + b), half the harmonic mean (the reference's fusion); 0 where both are 0."""
    total = a + b
    return torch.where(total > 0, a * b / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def upsample_patch_map(patch_scores: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """(B, P) patch scores on a square grid -> (B, H, W) by bilinear interpolation (align_corners=False)."""
    side = math.isqrt(patch_scores.shape[-1])
    if side * side != patch_scores.shape[-1]:
        raise ValueError(f"{patch_scores.shape[-1]} patches do not form a square grid")
    grid = patch_scores.reshape(-1, 1, side, side)
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]


def _symmetric_indices(length: int, radius: int, device) -> torch.Tensor:
    # scipy's "reflect" mode (d c b a | a b c d | d c b a): period 2n, the edge sample repeated.
    index = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(index < length, index, 2 * length - 1 - index)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps equal to scipy.ndimage.gaussian_filter(sigma) per map."""
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = maps
    for dim in (1, 2):
        padded = out.index_select(dim, _symmetric_indices(out.shape[dim], radius, maps.device))
        windows = padded.unfold(dim, 2 * radius + 1, 1)
        out = windows @ kernel
    return out


def scaled_sigma(sigma: float, reference_size: int, output_size: int | tuple[int, int]) -> float:
    """The blur sigma for a map of `output_size`, scaled from `sigma` at `reference_size` pixels."""
    side = output_size if isinstance(output_size, int) else max(output_size)
    return sigma * side / reference_size
