"""Scores of PromptAD (spec section 5): visual memory, text scores, fusion, maps and image scores."""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .precision import native_bf16


# The approximate search pays off once the bank is large: below this many rows per layer (about 16 reference
# images of 225 patches) the exact product is cheap and `search="auto"` keeps it.
SHORTLIST_MIN_ROWS = 4096
# A patch whose shortlist would hold more candidates than this (near-ties within the error bound) is searched
# exactly instead.
SHORTLIST_MAX_CANDIDATES = 64
_BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bfloat16 keeps 8 significant bits: round-to-nearest relative error <= 2^-8
_FP32_UNIT_ROUNDOFF = 2.0 ** -24


def bf16_product_error_bound(width: int) -> float:
    """c such that |bf16 product of q and b - q.b| <= c |q| |b| for vectors of `width` elements.

    Both inputs are rounded to bfloat16 (relative error <= u each), the products are summed in float32 (the
    standard bound gamma_n = n u32 / (1 - n u32) on sum |q_i b_i|) and the result is rounded to bfloat16
    once more (u); sum |q_i b_i| <= |q| |b| (Cauchy-Schwarz). So c = (1 + u)^3 (1 + gamma_n) - 1.
    """
    gamma = width * _FP32_UNIT_ROUNDOFF / (1 - width * _FP32_UNIT_ROUNDOFF)
    return (1 + _BF16_UNIT_ROUNDOFF) ** 3 * (1 + gamma) - 1


def _exact_nearest(flat: torch.Tensor, bank: torch.Tensor, max_block_elements: int) -> torch.Tensor:
    """Highest cosine per query row over the whole bank, as float32 blocks of matrix products (no block of
    similarities holds more than `max_block_elements` values)."""
    bank_rows = max(1, min(bank.shape[0], max_block_elements))
    query_rows = max(1, max_block_elements // bank_rows)
    nearest = []  # highest cosine per query row, block by block (no in-place writes: autograd works)
    for query in range(0, flat.shape[0], query_rows):
        best = None
        for start in range(0, bank.shape[0], bank_rows):
            block = (flat[query: query + query_rows] @ bank[start: start + bank_rows].T).amax(dim=1)
            best = block if best is None else torch.maximum(best, block)
        nearest.append(best)
    return torch.cat(nearest)


# id(bank) -> (weak reference to the bank, its version, its bf16 copy); an entry leaves with its bank.
_BF16_BANKS: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


def _bf16_copy(bank: torch.Tensor) -> torch.Tensor:
    """The bank in bfloat16, remembered while the bank lives unchanged (a memory bank is module state that
    serves many forwards; converting it each time would cost a good part of the search it speeds up). Kept
    beside the tensor, not on it, so nothing extra is pickled with the model."""
    key = id(bank)
    cached = _BF16_BANKS.get(key)
    if cached is not None and cached[0]() is bank and cached[1] == bank._version:
        return cached[2]
    if cached is None:
        weakref.finalize(bank, _BF16_BANKS.pop, key, None)
    low = bank.detach().to(torch.bfloat16)
    _BF16_BANKS[key] = (weakref.ref(bank), bank._version, low)
    return low


@contextlib.contextmanager
def _float32_accumulation(device: torch.device) -> Iterator[None]:
    """cuBLAS may sum bf16 products in bf16 unless told not to; the error bound assumes float32 sums."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


def _shortlisted_nearest(flat: torch.Tensor, bank: torch.Tensor, low_bank: torch.Tensor, max_block_elements: int,
                         max_candidates: int = SHORTLIST_MAX_CANDIDATES) -> torch.Tensor:
    """The same values as `_exact_nearest` (to float32 rounding), from a bfloat16 product that shortlists
    candidates and an exact float32 re-check of the shortlist.

    With a = the bf16 similarity and e = its error bound per query (bf16_product_error_bound): the true
    nearest neighbour j* has a_j* >= s* - e >= max(a) - 2e, so every row with a >= max(a) - 2e is kept and
    no row below can be the nearest. Patches with more than `max_candidates` such rows go to the exact search.
    """
    bound = bf16_product_error_bound(flat.shape[-1]) * bank.norm(dim=-1).max()
    rows = max(1, max_block_elements // max(bank.shape[0], 1))
    nearest = []
    for query in range(0, flat.shape[0], rows):
        block = flat[query: query + rows]
        margin = 2 * bound * block.detach().norm(dim=-1, keepdim=True)
        with _float32_accumulation(low_bank.device):
            approx = (block.detach().to(torch.bfloat16) @ low_bank.T).float()
        keep = approx >= approx.amax(dim=1, keepdim=True) - margin
        counts = keep.sum(dim=1)
        easy = counts <= max_candidates
        pair_rows, pair_cols = (keep & easy.unsqueeze(1)).nonzero(as_tuple=True)
        step = max(1, max_block_elements // flat.shape[-1])  # gathered (pairs, W) blocks stay within the budget
        dots = [(block[pair_rows[i: i + step]] * bank[pair_cols[i: i + step]]).sum(dim=-1)
                for i in range(0, pair_rows.shape[0], step)]
        dots = torch.cat(dots) if dots else flat.new_zeros(0)
        best = torch.full((block.shape[0],), -torch.inf, dtype=dots.dtype, device=dots.device)
        best = best.scatter_reduce(0, pair_rows, dots, reduce="amax")
        hard = (~easy).nonzero(as_tuple=True)[0]
        if hard.numel():
            best = best.index_put((hard,), _exact_nearest(block[hard], bank, max_block_elements))
        nearest.append(best)
    return torch.cat(nearest)


def _use_shortlist(search: str, bank: torch.Tensor) -> bool:
    if search not in ("auto", "exact", "shortlist"):
        raise ValueError(f"search={search!r}; expected 'auto', 'exact' or 'shortlist'")
    if search != "auto":
        return search == "shortlist"
    return bank.shape[0] >= SHORTLIST_MIN_ROWS and native_bf16(bank.device)


def memory_patch_scores(memory_features: Sequence[torch.Tensor], memory_bank: Sequence[torch.Tensor],
                        max_block_elements: int = 1 << 22, search: str = "auto") -> torch.Tensor:
    """s_vis per patch (B, P): mean over layers of the min over the bank of (1 - cos) / 2.

    memory_features: per layer (B, P, W) unit vectors; memory_bank: per layer (..., W) unit vectors (e.g.
    (K, W) or (k, P, W)). No block of similarities holds more than `max_block_elements` values (16 MiB in
    float32), whatever the batch size and the number of references.
    search: "exact" (float32 matrix products), "shortlist" (a bfloat16 product shortlists candidates within
    its proven error bound, then float32 re-checks them: the same nearest neighbour, see
    `_shortlisted_nearest`) or "auto" (shortlist for banks of SHORTLIST_MIN_ROWS rows or more on hardware
    with native bfloat16, else exact).
    Always float32, also inside an autocast region: a low-precision cosine would coarsen the scores.
    """
    if len(memory_features) != len(memory_bank):
        raise ValueError(f"{len(memory_features)} feature layers but {len(memory_bank)} memory layers")
    per_layer = []
    with torch.autocast(memory_features[0].device.type, enabled=False):
        for features, layer in zip(memory_features, memory_bank):
            flat = features.reshape(-1, features.shape[-1]).float()
            bank = layer.reshape(-1, layer.shape[-1]).to(flat)
            if torch.compiler.is_exporting():
                # One block: a loop over a batch-dependent row count cannot be part of a graph with a dynamic
                # batch (anomclip export). The same maxima, only not bounded in memory.
                nearest = (flat @ bank.T).amax(dim=1)
            elif _use_shortlist(search, bank):
                low_bank = _bf16_copy(layer).reshape(bank.shape).to(flat.device)
                nearest = _shortlisted_nearest(flat, bank, low_bank, max_block_elements)
            else:
                nearest = _exact_nearest(flat, bank, max_block_elements)
            per_layer.append(((1.0 - nearest) / 2.0).reshape(features.shape[:-1]))
    return torch.stack(per_layer).mean(dim=0).clamp(0.0, 1.0)


def text_anomaly_probability(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(tau * [v.n, v.a])[1] for unit features (..., D) and prototypes (2, D) = [normal, anomaly]."""
    with torch.autocast(features.device.type, enabled=False):
        features = features.float()
        logits = temperature * features @ prototypes.T.to(features)
        return logits.softmax(dim=-1)[..., 1]


def harmonic_fusion(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h(a, b) = ab / (a + b), half the harmonic mean (the reference's fusion); 0 where both are 0."""
    total = a + b
    return torch.where(total > 0, a * b / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def _square_grid(patch_scores: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(patch_scores.shape[-1])
    if side * side != patch_scores.shape[-1]:
        raise ValueError(f"{patch_scores.shape[-1]} patches do not form a square grid")
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
