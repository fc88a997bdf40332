"""One scores.csv and errors.csv in input order from partial results (accelerate shards, Ray Data rows), in
the format `writers.PredictionWriter` writes for a single process."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Optional, Sequence

from ..inference.writers import (
    ERRORS_FILE,
    NOT_AN_IMAGE,
    SCORES_FILE,
    PredictionResult,
)
from ..io.atomic_io import write_csv
from ..io.image_io import display_path

SCORE_COLUMNS = ["path", "image_score", "normalized_score", "decision"]


def plan_hash(paths: Sequence[str], **settings) -> str:
    """A digest of the inputs (in order) and the settings that decide their scores: a rerun with the same
    digest may reuse finished parts, any other run starts afresh."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()


def write_merged(output_dir: str, header: Sequence[str], rows: Iterable[Sequence[str]],
                 failures: Sequence[tuple[str, str]], *, threshold: Optional[float],
                 not_images: Sequence[str] = (), unlistable: Sequence[tuple[str, str]] = ()) -> PredictionResult:
    """Write scores.csv (`header` + `rows`, already in input order) and errors.csv (the failures, then the
    unlistable folders and the files that are not images) atomically; the result for the summary line."""
    result = PredictionResult(output_dir=output_dir, threshold=threshold)
    table = [list(header)]
    for row in rows:
        table.append(list(row))
        result.scores[row[0]] = float(row[1])
    write_csv(os.path.join(output_dir, SCORES_FILE), table)
    result.failures = list(failures) + list(unlistable) + [(path, NOT_AN_IMAGE) for path in not_images]
    if result.failures:
        write_csv(os.path.join(output_dir, ERRORS_FILE),
                  [["path", "error"], *((display_path(path), why) for path, why in result.failures)])
    return result
