"""Feature rows kept on disk while a large reference set streams through the vision tower.

A memory layer of k reference images holds k x patches rows (k = 1000 at the paper shape: 225,000 x 896
float32 = 806 MB per layer). `SpilledRows` appends them batch by batch to an anonymous temporary file (removed by
the OS when the file is closed or the process ends, so a killed fit leaves nothing behind) and reads them back
in chunks with plain reads: they never all sit in memory, and reading them does not map the file into the
process (its pages do not count in the process' resident size).
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

import numpy as np
import torch

_ROW_BYTES = 4  # float32


class SpilledRows:
    """(N, width) float32 rows in a temporary file: `append` batches, then slice (`rows[a:b]`) or `take`."""

    def __init__(self, width: int, directory: Optional[str] = None):
        self.width = int(width)
        self._rows = 0
        self._file = tempfile.TemporaryFile(dir=directory)

    @property
    def shape(self) -> tuple[int, int]:
        return (self._rows, self.width)

    def __len__(self) -> int:
        return self._rows

    def append(self, rows: torch.Tensor) -> None:
        rows = rows.detach().reshape(-1, self.width).float().cpu().contiguous()
        self._file.seek(self._rows * self.width * _ROW_BYTES)
        self._file.write(rows.numpy().tobytes())
        self._rows += rows.shape[0]

    def __getitem__(self, item: slice) -> torch.Tensor:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("SpilledRows supports contiguous slices only; use take(indices) for others")
        start, stop, _ = item.indices(self._rows)
        count = max(0, stop - start)
        out = np.empty((count, self.width), dtype=np.float32)
        if count:
            read = os.preadv(self._file.fileno(), [memoryview(out).cast("B")], start * self.width * _ROW_BYTES)
            if read != out.nbytes:
                raise OSError(f"short read of spilled feature rows ({read} of {out.nbytes} bytes)")
        return torch.from_numpy(out)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows at `indices` (in that order), read one row at a time in index order."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        out = torch.empty(indices.shape[0], self.width)
        order = torch.argsort(indices)
        for position in order.tolist():
            row = int(indices[position])
            if not 0 <= row < self._rows:
                raise IndexError(f"row {row} out of range for {self._rows} spilled rows")
            out[position] = self[row: row + 1][0]
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SpilledRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
