"""A bounded visual memory: PatchCore's greedy k-center coreset of a bank of patch features.

The greedy algorithm (Sener & Savarese; PatchCore, Roth et al. 2022) keeps M of N rows: it starts from one row
drawn with the seed, then repeatedly keeps the row farthest from everything kept so far. It runs on the rows
projected by a seeded Gaussian random projection to a Johnson-Lindenstrauss sized width, so one step costs
O(N x d) and the whole selection holds O(N x d) values: no N x N matrix is ever built (the original PatchCore
coreset did, and needed over 100 GB for large sets).

The coverage radius is then recomputed in the original feature space, exactly, by the chunked nearest-neighbour
search: r = max over every row x of min over kept rows c of ||x - c||. For unit vectors the memory score of a
patch against one layer is ||x - c||^2 / 4 = (1 - cos) / 2, so r bounds what the coreset changes:
- a reference patch scores at most r^2 / 4 against the coreset (0 against the full bank);
- any query q: d(q, coreset) <= d(q, full bank) + r (triangle inequality through q's nearest full-bank row).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from ..io.progress import Phase
from .search import nearest_distance
from ..errors import ConfigurationError

# sklearn's johnson_lindenstrauss_min_dim at PatchCore's eps (anomalib's default as well).
DEFAULT_JL_EPS = 0.9
# Rows per projection chunk: (chunk, width) float32 at a time (8192 x 1024 x 4 B = 32 MiB).
PROJECTION_CHUNK_ROWS = 8192
# Rows per block of the lazy greedy selection (small blocks: a step refreshes few rows; 512 measured 1.4-20x
# faster than 4096 here) and kept rows per distance product.
GREEDY_BLOCK_ROWS = 512
GREEDY_CENTER_CHUNK = 2048
# Torch threads of the greedy loop: its products are small (a 512-row block against a few kept rows), so with
# more threads the pool's wake-up and contention cost more than they share (measured up to 10x slower a step
# at 2 threads on a loaded 2-core machine). None: torch's current setting.
GREEDY_THREADS = 1


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Run the block with `count` intra-op torch threads (None: unchanged), restoring the setting after."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def johnson_lindenstrauss_dim(rows: int, eps: float = DEFAULT_JL_EPS) -> int:
    """Smallest width keeping pairwise distances of `rows` points within 1 +- eps with high probability:
    4 ln(n) / (eps^2 / 2 - eps^3 / 3) (Dasgupta & Gupta), as scikit-learn's johnson_lindenstrauss_min_dim."""
    if not 0 < eps < 1:
        raise ConfigurationError(f"eps={eps}; expected a number strictly between 0 and 1")
    return max(1, int(4 * math.log(max(rows, 2)) / (eps ** 2 / 2 - eps ** 3 / 3)))


def random_projection(width: int, dim: int, seed: int) -> torch.Tensor:
    """(width, dim) Gaussian matrix with N(0, 1/dim) entries, from its own seeded generator."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(width, dim, generator=generator) / math.sqrt(dim)


def project_rows(features: torch.Tensor, projection: Optional[torch.Tensor],
                 chunk_rows: int = PROJECTION_CHUNK_ROWS) -> torch.Tensor:
    """(N, dim) float32 projection of (N, width) rows, chunk by chunk (the input may be memory-mapped)."""
    out_width = features.shape[1] if projection is None else projection.shape[1]
    out = torch.empty(features.shape[0], out_width, dtype=torch.float32)
    for start in range(0, features.shape[0], chunk_rows):
        chunk = features[start: start + chunk_rows].float()
        finite = torch.isfinite(chunk).all(dim=1)
        if not bool(finite.all()):
            bad = start + int((~finite).nonzero()[0])
            raise ConfigurationError(f"row {bad} of the memory bank holds NaN or infinite values ({int((~finite).sum())} such "
                             f"rows from row {start} on); expected finite features")
        out[start: start + chunk.shape[0]] = chunk if projection is None else chunk @ projection
    return out


def greedy_k_center(points: torch.Tensor, size: int, seed: int = 0, progress: bool = False,
                    block_rows: int = GREEDY_BLOCK_ROWS, threads: Optional[int] = GREEDY_THREADS) -> torch.Tensor:
    """(size,) row indices, in selection order, of the greedy k-center selection over `points` (N, d).

    The plain algorithm lowers every row's distance to the kept set after each step (a matrix-vector product
    over all N rows: memory-bound, about 12 ms a step for 225,000 x 128 on 2 cores). The same choice is made
    lazily here: rows live in blocks, each with an upper bound of its farthest distance (distances only shrink);
    each step brings only the block with the highest bound up to date (one matrix product with the rows kept
    since its last update), until the block with the highest bound is current: its farthest row is then the
    farthest overall. Same selection as the plain loop (up to exact ties), O(N x d) memory, no N x N matrix.
    Deterministic for a seed (it draws only the first row). The loop runs at `threads` torch threads (the
    caller's setting is restored after): the same indices at any setting.
    """
    with torch_threads(threads):
        return _greedy_k_center(points, size, seed, progress, block_rows)


def _greedy_k_center(points: torch.Tensor, size: int, seed: int, progress: bool, block_rows: int) -> torch.Tensor:
    rows = points.shape[0]
    _check_size(size, rows)
    points = points.float().contiguous()
    squared = (points * points).sum(dim=1)
    generator = torch.Generator().manual_seed(int(seed))
    current = int(torch.randint(rows, (1,), generator=generator))
    blocks = -(-rows // block_rows)
    nearest = torch.full((rows,), math.inf)  # squared distance of each row to the kept rows applied so far
    bound = torch.full((blocks,), math.inf)  # >= the largest `nearest` of each block (equal once current)
    applied = [0] * blocks  # kept rows already applied to each block
    kept = torch.empty(size, dtype=torch.long)

    def bring_up_to_date(block: int, count: int) -> None:
        lo, hi = block * block_rows, min(rows, (block + 1) * block_rows)
        near = nearest[lo:hi]
        for start in range(applied[block], count, GREEDY_CENTER_CHUNK):  # (block, chunk) distances at a time
            centers = kept[start: min(count, start + GREEDY_CENTER_CHUNK)]
            # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2
            distances = torch.addmm(squared[lo:hi].unsqueeze(1), points[lo:hi], points[centers].T, alpha=-2.0)
            torch.minimum(near, distances.add_(squared[centers]).amin(dim=1), out=near)
        applied[block] = count
        bound[block] = near.max()

    bar = _progress(size, progress)
    for step in range(size):
        kept[step] = current
        nearest[current] = 0.0  # rounding may leave a tiny positive self-distance
        while True:
            block = int(bound.argmax())
            if applied[block] == step + 1:
                break
            bring_up_to_date(block, step + 1)
        lo = block * block_rows
        current = lo + int(nearest[lo: lo + block_rows].argmax())
        if bar is not None and (step + 1) % 256 == 0:
            bar.update(256)
    if bar is not None:
        bar.update(size - bar.count)
        bar.close()
    return kept


def _check_size(size: int, rows: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= rows:
        raise ConfigurationError(f"coreset size {size!r}; expected an integer from 1 to {rows} (the rows of the bank)")


def _progress(total: int, enabled: bool, name: str = "coreset", unit: str = "row"):
    return Phase(name, total, unit) if enabled else None


@dataclass(frozen=True)
class Coreset:
    """The kept rows of one bank: `indices` (M,) into its N rows (selection order) and the coverage radius."""

    indices: torch.Tensor
    radius: float  # max over all N rows of the distance to the nearest kept row, in the original space
    rows: int  # N
    projection_dim: Optional[int]  # width the greedy selection ran at (None: the original width)
    seed: int


def select_coreset(features, size: int, seed: int = 0, projection_dim: Optional[int] = None,
                   eps: float = DEFAULT_JL_EPS, progress: bool = False) -> Coreset:
    """PatchCore's greedy coreset of `size` rows of `features` (N, W): a tensor, or rows read in chunks
    (`rows.SpilledRows`); any width W. The selection runs on a seeded random projection to
    `projection_dim` (default: johnson_lindenstrauss_dim(N, eps), no projection when that is not narrower
    than W); the radius is then measured exactly in the original space (chunked search, bounded memory).
    """
    rows, width = int(features.shape[0]), int(features.shape[1])
    _check_size(size, rows)
    dim = johnson_lindenstrauss_dim(rows, eps) if projection_dim is None else int(projection_dim)
    if dim < 1:
        raise ConfigurationError(f"projection_dim={projection_dim}; expected a positive integer")
    projection = random_projection(width, dim, seed) if dim < width else None
    points = project_rows(features, projection)
    indices = greedy_k_center(points, size, seed, progress) if size < rows else torch.arange(rows)
    del points
    radius = coverage_radius(features, take_rows(features, indices), progress=progress)
    return Coreset(indices=indices, radius=radius, rows=rows, projection_dim=None if projection is None else dim,
                   seed=int(seed))


def coverage_radius(features, kept: torch.Tensor, chunk_rows: int = PROJECTION_CHUNK_ROWS,
                    progress: bool = False) -> float:
    """max over the rows of `features` of the Euclidean distance to the nearest row of `kept`.

    The search gives every row's distance through inner products (float32: an error near 1e-7 in the squared
    distance); the farthest row of each chunk is then measured again from its differences, so the radius of the
    row that attains it has no cancellation (0 when every row is kept, not sqrt(rounding))."""
    kept, radius = kept.float(), 0.0
    bar = _progress(int(features.shape[0]), progress, "coverage radius")
    for start in range(0, int(features.shape[0]), chunk_rows):
        chunk = features[start: start + chunk_rows].float()
        farthest = chunk[int(nearest_distance(chunk, kept).argmax())]
        radius = max(radius, float((kept - farthest).square().sum(dim=1).min().sqrt()))
        if bar is not None:
            bar.update(int(chunk.shape[0]))
    if bar is not None:
        bar.close()
    return radius


def take_rows(features, indices: torch.Tensor) -> torch.Tensor:
    """features[indices] as a float32 tensor, for a tensor or a chunked row source (`take`)."""
    if isinstance(features, torch.Tensor):
        return features[indices].float()
    return features.take(indices)
