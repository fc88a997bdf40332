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
    """A digest of the inputs (in order, each with its size and modification time) and the settings that decide
    their scores, the local model files they name included (`source_stamp`): a rerun with the same digest may
    reuse finished parts; a replaced input, a re-fitted adapter or any other change starts afresh."""
    sources = {key: source_stamp(settings[key]) for key in SOURCE_SETTINGS if settings.get(key)}
    digest = hashlib.sha256(json.dumps({**settings, "sources": sources}, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(os.fsencode(path) + b"\0" + _file_stamp(path).encode() + b"\0")
    return digest.hexdigest()


# The settings that name files on disk whose content decides the scores (when they are local).
SOURCE_SETTINGS = ("base", "category", "onnx", "memory_backbone")


def _file_stamp(path: str) -> str:
    """size:mtime_ns of a file (a replaced file gets another), or "missing"."""
    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def source_stamp(location) -> Optional[str]:
    """A digest of a local model file or folder as it is now: the SHA-256 of its small JSON files (an adapter's
    category.json, a sidecar, config.json) and the size and modification time of every other file; None for
    what is not on disk (a Hub id: its revision is a setting)."""
    location = os.fspath(location)
    if os.path.isfile(location):
        files = [location] + ([location + ".json"] if os.path.isfile(location + ".json") else [])
    elif os.path.isdir(location):
        files = sorted(os.path.join(location, name) for name in os.listdir(location)
                       if os.path.isfile(os.path.join(location, name)))
    else:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode("utf-8", "surrogateescape") + b"\0")
        if path.endswith(".json") and os.path.getsize(path) <= SMALL_FILE_BYTES:
            with open(path, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
        else:
            digest.update(_file_stamp(path).encode())
    return digest.hexdigest()


SMALL_FILE_BYTES = 1 << 20


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
