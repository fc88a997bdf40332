"""How many patch rows a memory layer keeps: the whole bank (exact, the paper's setting) or a coreset.

Rule (`memory_rows`): a bank of at most DEFAULT_MAX_EXACT_ROWS rows per memory layer stays exact; a larger one
keeps a greedy coreset of DEFAULT_MAX_EXACT_ROWS rows, unless `memory_size` (rows kept) or `coreset_ratio`
(fraction kept; 1 = exact) says otherwise. At the paper shape (225 patches per image) that is exact up to 72
reference images, so the 1-4 shot protocol is never touched, and the search never holds more than 16384 rows per
layer by default however many references there are.
"""

from __future__ import annotations

import math
from typing import Optional
from ..errors import ConfigurationError

DEFAULT_MAX_EXACT_ROWS = 16384


def memory_rows(rows: int, memory_size: Optional[int] = None, coreset_ratio: Optional[float] = None) -> Optional[int]:
    """Rows to keep per memory layer of a bank of `rows` (references x patches), or None for the exact bank.

    Raises ValueError naming the value and what was expected for a size of 0 or larger than the bank, a ratio
    outside (0, 1], or both given."""
    if memory_size is not None and coreset_ratio is not None:
        raise ConfigurationError(f"memory_size={memory_size!r} and coreset_ratio={coreset_ratio!r}: give one of them")
    if memory_size is not None:
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
            raise ConfigurationError(f"memory_size={memory_size!r}; expected a positive number of patch rows to keep per "
                             f"memory layer (at most the bank's {rows})")
        if memory_size > rows:
            raise ConfigurationError(f"memory_size={memory_size} is larger than the memory bank: its {rows} rows (reference "
                             f"images x patches) per layer; expected 1 to {rows}")
        return None if memory_size == rows else memory_size
    if coreset_ratio is not None:
        if isinstance(coreset_ratio, bool) or not isinstance(coreset_ratio, (int, float)) or \
                not math.isfinite(coreset_ratio) or not 0 < coreset_ratio <= 1:
            raise ConfigurationError(f"coreset_ratio={coreset_ratio!r}; expected a fraction of the bank's rows to keep, "
                             "greater than 0 and at most 1 (1: the exact bank)")
        size = max(1, round(coreset_ratio * rows))
        return None if size >= rows else size
    return None if rows <= DEFAULT_MAX_EXACT_ROWS else DEFAULT_MAX_EXACT_ROWS


def default_rule_text(rows: int, size: int) -> str:
    """The log line when the default rule turns a bank into a coreset."""
    return (f"visual memory: {rows} patch rows per layer is more than {DEFAULT_MAX_EXACT_ROWS} (the default exact "
            f"limit), keeping a greedy coreset of {size} rows ({100 * size / rows:.1f} %); pass memory_size / "
            "--memory-size or coreset_ratio / --coreset-ratio (1 = exact) to choose")
