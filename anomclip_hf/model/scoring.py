"""Scores of PromptAD (docs/method/promptad.md, "Scoring"): visual memory, text scores, fusion, maps and image scores."""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ArgumentError
from ..memory.dino import dino_patch_distances
from ..memory.faiss_index import faiss_nearest_similarity
from ..memory.search import SHORTLIST_MIN_ROWS, bf16_copy, nearest_similarity, shortlist_measured_faster
from .precision import native_bf16

SEARCH_METHODS = ("auto", "exact", "shortlist", "faiss")


def _use_shortlist(search: str, bank: torch.Tensor) -> Optional[bool]:
    """True / False, or None where "auto" must measure (`_auto_shortlist`)."""
    if search not in SEARCH_METHODS:
        raise ArgumentError(f"search={search!r}; expected one of {SEARCH_METHODS}")
    if search == "faiss":
        return False
    if search != "auto":
        return search == "shortlist"
    if torch.compiler.is_exporting() or bank.shape[0] < SHORTLIST_MIN_ROWS or not native_bf16(bank.device):
        return False
    return None


def _auto_shortlist(flat: torch.Tensor, bank: torch.Tensor, low_bank: torch.Tensor, max_block_elements: int) -> bool:
    return shortlist_measured_faster(flat, bank, low_bank.to(flat.device), max_block_elements)


def memory_patch_scores(memory_features: Sequence[torch.Tensor], memory_bank: Sequence[torch.Tensor],
                        max_block_elements: int = 1 << 22, search: str = "auto") -> torch.Tensor:
    """s_vis per patch (B, P): mean over layers of the min over the bank of (1 - cos) / 2.

    memory_features: per layer (B, P, W) unit vectors; memory_bank: per layer (..., W) unit vectors (e.g.
    (K, W) or (k, P, W)). No block of similarities holds more than `max_block_elements` values (16 MiB in
    float32), whatever the batch size and the number of references.
    search: "exact" (float32 matrix products), "shortlist" (a bfloat16 product shortlists candidates within
    its proven error bound, then float32 re-checks them: the same nearest neighbour, see
    `memory.search.shortlisted_nearest`), "faiss" (faiss' exact inner-product index, the `[faiss]` extra) or "auto"
    (for banks of SHORTLIST_MIN_ROWS rows or more on hardware with bfloat16 instructions, the shortlist where it
    measured faster than the exact search for this shape, `memory.search.shortlist_measured_faster`; else exact).
    Always float32, also inside an autocast region: a low-precision cosine would coarsen the scores.
    """
    if len(memory_features) != len(memory_bank):
        raise ArgumentError(f"{len(memory_features)} feature layers but {len(memory_bank)} memory layers")
    per_layer = []
    with torch.autocast(memory_features[0].device.type, enabled=False):
        for features, layer in zip(memory_features, memory_bank):
            flat = features.reshape(-1, features.shape[-1]).float()
            bank = layer.reshape(-1, layer.shape[-1]).to(flat)
            shortlist = _use_shortlist(search, bank)
            low_bank = bf16_copy(layer).reshape(bank.shape).to(flat.device) if shortlist is not False else None
            if shortlist is None:  # auto: the shortlist only where it measured faster than the exact search
                shortlist = _auto_shortlist(flat, bank, low_bank, max_block_elements)
            if search == "faiss" and not torch.compiler.is_exporting():
                nearest = faiss_nearest_similarity(flat, layer)  # its index is kept per bank buffer
            else:
                nearest = nearest_similarity(flat, bank, shortlist=shortlist, low_bank=low_bank,
                                             max_block_elements=max_block_elements)
            per_layer.append(((1.0 - nearest) / 2.0).reshape(features.shape[:-1]))
    return torch.stack(per_layer).mean(dim=0).clamp(0.0, 1.0)


def dino_memory_scores(features: torch.Tensor, bank: torch.Tensor, max_block_elements: int = 1 << 22,
                       search: str = "auto") -> torch.Tensor:
    """s_dino per patch (B, P): AnomalyDINO's cosine distance 1 - cos to the nearest DINOv2 reference patch
    (`memory.dino.dino_patch_distances`), with the search choice of `memory_patch_scores`."""
    rows = bank.reshape(-1, bank.shape[-1])
    shortlist = _use_shortlist(search, rows)
    low_bank = None
    if shortlist is not False:  # a bank made inside inference_mode (leave-one-out subsets) has no version to cache by
        low_bank = rows.to(torch.bfloat16) if bank.is_inference() else bf16_copy(bank).reshape(rows.shape)
        low_bank = low_bank.to(features.device)
    if shortlist is None:  # auto: the shortlist only where it measured faster than the exact search
        flat = features.reshape(-1, features.shape[-1]).float()
        shortlist = _auto_shortlist(flat, rows.to(flat), low_bank, max_block_elements)
    return dino_patch_distances(features, rows, shortlist=shortlist, low_bank=low_bank,
                                max_block_elements=max_block_elements)


def text_anomaly_probability(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(tau * [v.n, v.a])[1] for unit features (..., D) and prototypes (2, D) = [normal, anomaly]."""
    with torch.autocast(features.device.type, enabled=False):
        features = features.float()
        logits = temperature * features @ prototypes.T.to(features)
        return logits.softmax(dim=-1)[..., 1]


def harmonic_fusion(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h(a, b) = ab / (a + b), half the harmonic mean (the reference's fusion); 0 where both are 0, NaN where
    either is NaN (never a silent 0: an exported graph has no finiteness check to stop it)."""
    total = a + b
    return torch.where(total == 0, torch.zeros_like(total), a * b / total.clamp_min(torch.finfo(total.dtype).tiny))


def fuse_patch_scores(text_patch: torch.Tensor, memory_patch: torch.Tensor) -> torch.Tensor:
    """h(text, memory) per patch. On one grid (the CLIP memory) exactly harmonic_fusion; on two grids (a DINOv2
    memory at its own resolution) on the finer one, the coarser map bilinearly resampled to it first."""
    if text_patch.shape[-1] == memory_patch.shape[-1]:
        return harmonic_fusion(text_patch, memory_patch)
    side = math.isqrt(max(text_patch.shape[-1], memory_patch.shape[-1]))

    def on_fine_grid(scores: torch.Tensor) -> torch.Tensor:
        return scores if scores.shape[-1] == side * side else upsample_patch_map(scores, side).flatten(1)

    return harmonic_fusion(on_fine_grid(text_patch), on_fine_grid(memory_patch))


def _square_grid(patch_scores: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(patch_scores.shape[-1])
    if side * side != patch_scores.shape[-1]:
        raise ArgumentError(f"{patch_scores.shape[-1]} patches do not form a square grid")
    return patch_scores.reshape(-1, side, side)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def upsample_grid(grid: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) by bilinear interpolation (align_corners=False)."""
    return F.interpolate(grid.unsqueeze(1), size=_pair(output_size), mode="bilinear", align_corners=False)[:, 0]


def upsample_patch_map(patch_scores: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """(B, P) patch scores on a square grid -> (B, H, W) by bilinear interpolation (align_corners=False)."""
    return upsample_grid(_square_grid(patch_scores), output_size)


def _symmetric_indices(length: int, radius: int, device) -> torch.Tensor:
    # scipy's "reflect" mode (d c b a | a b c d | d c b a): period 2n, the edge sample repeated.
    index = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(index < length, index, 2 * length - 1 - index)


def _blur_along(maps: torch.Tensor, dim: int, sigma: float, truncate: float) -> torch.Tensor:
    """1-D Gaussian blur of `maps` along `dim`, as scipy.ndimage.gaussian_filter1d (reflect mode)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    padded = maps.index_select(dim, _symmetric_indices(maps.shape[dim], radius, maps.device))
    return padded.unfold(dim, 2 * radius + 1, 1) @ kernel


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps equal to scipy.ndimage.gaussian_filter(sigma) per map."""
    if sigma <= 0:
        return maps
    return _blur_along(_blur_along(maps, 1, sigma, truncate), 2, sigma, truncate)


@functools.lru_cache(maxsize=16)
def _smooth_upsampling_matrix(in_size: int, out_size: int, sigma: float, truncate: float) -> torch.Tensor:
    """(out, in) float64 matrix of "bilinear upsample, then blur" along one axis.

    Built by running upsample_grid and the blur on the identity (a (1, in) grid per basis vector): the
    same computation as the plain path, only reordered.
    """
    basis = torch.eye(in_size, dtype=torch.float64).unsqueeze(1)  # (in, 1, in)
    rows = upsample_grid(basis, (1, out_size))[:, 0]  # (in, out): row j = the upsampled basis vector j
    if sigma > 0:
        rows = _blur_along(rows, 1, sigma, truncate)
    return rows.T.contiguous()


def smooth_upsample(patch_scores: torch.Tensor, output_size: int | tuple[int, int], sigma: float = 0.0,
                    truncate: float = 4.0) -> torch.Tensor:
    """gaussian_blur(upsample_patch_map(patch_scores, output_size), sigma), computed faster.

    Both steps are linear and separable, so the map is A_h @ grid @ A_w^T with small (H, side) and
    (W, side) matrices: about 30x fewer operations than upsampling to H x W and blurring there.
    Results equal the plain path to float32 rounding (tests/test_fast_paths.py).
    """
    grid = _square_grid(patch_scores)
    height, width = _pair(output_size)
    sigma = max(float(sigma), 0.0)

    def operator(out_size: int) -> torch.Tensor:
        matrix = _smooth_upsampling_matrix(grid.shape[-1], out_size, sigma, float(truncate))
        return matrix.to(device=grid.device, dtype=grid.dtype)

    with torch.autocast(grid.device.type, enabled=False):
        return operator(height) @ grid @ operator(width).T


def upsampled_peak(patch_scores: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """(B,) max of the bilinearly upsampled (unsmoothed) patch map, as max(upsample_patch_map(...))."""
    return smooth_upsample(patch_scores, output_size).flatten(1).amax(dim=1)


def scaled_sigma(sigma: float, reference_size: int, output_size: int | tuple[int, int]) -> float:
    """The blur sigma for a map of `output_size`, scaled from `sigma` at `reference_size` pixels."""
    side = output_size if isinstance(output_size, int) else max(output_size)
    return sigma * side / reference_size
