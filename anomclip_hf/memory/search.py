"""Nearest-neighbour search of a memory bank: the highest cosine similarity of each query row over the bank's
rows, for any bank size with bounded peak memory.

    exact_nearest        float32 matrix products in blocks (no block holds more than max_block_elements values)
    shortlisted_nearest  a bfloat16 product shortlists candidates within its proven error bound, float32
                         re-checks them: the same nearest neighbour (worth it on hardware with native bf16)
    nearest_similarity   the entry point: one of the two (or faiss' exact index, the `[faiss]` extra), or one
                         unblocked product inside an ONNX export
    nearest_distance     Euclidean distance to the nearest bank row, for vectors of any norm (coreset radii)
    shortlist_measured_faster  whether the shortlist beats the exact search here, timed once per shape

Inputs are unit vectors (queries (N, W), bank (M, W)); callers turn similarities into their scores.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from .bank_cache import per_bank
from ..errors import ConfigurationError

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


def exact_nearest(flat: torch.Tensor, bank: torch.Tensor, max_block_elements: int) -> torch.Tensor:
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
_BF16_BANKS: dict = {}  # id(bank) -> (weak reference to the bank, its version, its bf16 copy)


def bf16_copy(bank: torch.Tensor) -> torch.Tensor:
    """The bank in bfloat16 (for `shortlisted_nearest`), built once per bank (`per_bank`)."""
    return per_bank(_BF16_BANKS, bank, lambda rows: rows.detach().to(torch.bfloat16))


@contextlib.contextmanager
def float32_accumulation(device: torch.device) -> Iterator[None]:
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


def shortlisted_nearest(flat: torch.Tensor, bank: torch.Tensor, low_bank: torch.Tensor, max_block_elements: int,
                         max_candidates: int = SHORTLIST_MAX_CANDIDATES) -> torch.Tensor:
    """The same values as `exact_nearest` (to float32 rounding), from a bfloat16 product that shortlists
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
        with float32_accumulation(low_bank.device):
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
            best = best.index_put((hard,), exact_nearest(block[hard], bank, max_block_elements))
        nearest.append(best)
    return torch.cat(nearest)


# (device type, width, bank rows and query rows to the power of two) -> whether the shortlist was faster
_MEASURED_FASTER: dict = {}
MEASURE_ROUNDS = 2


def shortlist_measured_faster(queries: torch.Tensor, bank: torch.Tensor, low_bank: torch.Tensor,
                              max_block_elements: int = 1 << 22) -> bool:
    """Whether `shortlisted_nearest` is faster than `exact_nearest` for searches of this shape on this device.

    Native bf16 instructions do not make the bf16 product faster by themselves (measured 2.4x slower than the
    exact search on one AVX512_BF16 CPU), so both are timed on these very inputs, `MEASURE_ROUNDS` rounds each
    (the best of each), the first time a shape comes (bank and query rows to the nearest power of two); the
    answer is kept for the process."""
    key = (queries.device.type, int(bank.shape[1]), int(bank.shape[0]).bit_length(),
           int(queries.shape[0]).bit_length())
    if key not in _MEASURED_FASTER:
        import time

        best = {"exact": float("inf"), "shortlist": float("inf")}
        with torch.no_grad():
            for _ in range(MEASURE_ROUNDS):
                for name in best:
                    began = time.perf_counter()
                    if name == "exact":
                        exact_nearest(queries, bank, max_block_elements)
                    else:
                        shortlisted_nearest(queries, bank, low_bank, max_block_elements)
                    if queries.device.type == "cuda":
                        torch.cuda.synchronize(queries.device)
                    best[name] = min(best[name], time.perf_counter() - began)
        _MEASURED_FASTER[key] = best["shortlist"] < best["exact"]
    return _MEASURED_FASTER[key]


def nearest_similarity(queries: torch.Tensor, bank: torch.Tensor, *, shortlist: bool = False,
                       low_bank: Optional[torch.Tensor] = None, max_block_elements: int = 1 << 22,
                       faiss: bool = False) -> torch.Tensor:
    """(N,) highest cosine of each query row over the bank's rows (float32 inputs of the same width).

    shortlist: use `shortlisted_nearest` with `low_bank` (the bank in bfloat16; `bf16_copy` keeps one per bank).
    faiss: faiss' exact inner-product index instead (`memory.faiss_index`, the `[faiss]` extra; same values to
    float32 rounding).
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ConfigurationError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)}: expected (N, W) and (M, W) "
                         "of the same width W")
    if torch.compiler.is_exporting():
        # One block: a loop over a batch-dependent row count cannot be part of a graph with a dynamic batch
        # (anomclip export). The same maxima, only not bounded in memory.
        return (queries @ bank.T).amax(dim=1)
    if bank.shape[0] == 0:
        raise ConfigurationError("the memory bank has no rows to search")
    if faiss:
        from .faiss_index import faiss_nearest_similarity

        return faiss_nearest_similarity(queries, bank)
    if shortlist:
        return shortlisted_nearest(queries, bank, bf16_copy(bank) if low_bank is None else low_bank,
                                   max_block_elements)
    return exact_nearest(queries, bank, max_block_elements)


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, max_block_elements: int = 1 << 22) -> torch.Tensor:
    """(N,) Euclidean distance of each query row to its nearest bank row, for vectors of any norm.

    min_c ||x - c||^2 = ||x||^2 - 2 max_c (x.c - ||c||^2 / 2): one exact inner-product search of [x, 1]
    against [c, -||c||^2 / 2], chunked as `exact_nearest` is (bounded memory for any bank size). Float32:
    squared distances carry an absolute error near 1e-7 x the squared norms.
    """
    flat, rows = queries.float(), bank.float()
    augmented_bank = torch.cat([rows, -0.5 * (rows * rows).sum(dim=1, keepdim=True)], dim=1)
    best = exact_nearest(torch.cat([flat, flat.new_ones(flat.shape[0], 1)], dim=1), augmented_bank,
                         max_block_elements)
    return ((flat * flat).sum(dim=1) - 2 * best).clamp_min(0).sqrt()
