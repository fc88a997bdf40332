"""Progress of a long phase of work (encoding references, coreset selection, radius, thresholds, training).

On a terminal a tqdm bar; elsewhere (a log file, a pipe, CI) one line per phase on stderr when it ends, with
what it did and how long it took, so a silent minute never looks like a hang and a log stays readable:

    fit: coreset: 5880 rows in 41.2 s
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

PREFIX = "fit"


def on_terminal(stream: Optional[TextIO] = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Phase:
    """`update(n)` as work is done, `close()` (or a `with` block) at the end; silent when not `enabled`."""

    def __init__(self, name: str, total: Optional[int] = None, unit: str = "it", enabled: bool = True,
                 stream: Optional[TextIO] = None, initial: int = 0):
        self.name, self.total, self.unit, self.enabled = name, total, unit, enabled
        self.stream = sys.stderr if stream is None else stream
        self.count = initial
        self._began = time.perf_counter()
        self._closed = False
        self._bar = None
        if enabled and on_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=name, unit=unit, leave=False, file=self.stream)

    def update(self, count: int = 1) -> None:
        self.count += count
        if self._bar is not None:
            self._bar.update(count)

    def set_postfix(self, **values) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            seconds = time.perf_counter() - self._began
            done = f"{self.count} {self.unit}" if self.unit else "done"
            print(f"{PREFIX}: {self.name}: {done} in {seconds:.1f} s", file=self.stream, flush=True)

    def abandon(self) -> None:
        """End without the "done" line (the phase failed or was interrupted); a no-op after `close`."""
        if not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()

    def __enter__(self) -> "Phase":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:  # a phase that failed did not finish: no "done" line
            self.abandon()
