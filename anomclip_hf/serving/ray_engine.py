"""Scoring a Ray Dataset of image paths or bytes over a pool of actors (extra `[ray]`).

`score_dataset(ds, spec)` adds the score columns with `map_batches` over an actor pool: each actor builds one
Predictor from the spec (`PredictorSpec`: plain values, so it travels to any node) and keeps it for every
batch; `num_gpus` per actor is yours to set. An input that cannot be decoded becomes a row with its error (the
job goes on); an actor that dies is restarted by Ray and its batch retried (Ray Data's actor pools restart and
retry without limit by default), so each input comes out once. `predict_with_ray` is `anomclip predict
--engine ray`: it streams the rows to Parquet (or CSV) files under OUTPUT/ray/, then writes scores.csv and
errors.csv in input order and, from the actors, the same overlays as a single process (OUTPUT must then be
storage every node of the cluster can write).
"""

from __future__ import annotations

import glob
import math
import os
import socket
from typing import Optional, Sequence

import numpy as np

from ..errors import AnomCLIPError, ArgumentError
from ..inference.inputs import printable
from ..inference.predictor import PredictorSpec
from ..inference.writers import (
    NOT_UTF8,
    ERRORS_FILE,
    MAPS_DIR,
    MASKS_DIR,
    OVERLAY_DIR,
    SCORES_FILE,
    PredictionResult,
    overlay_name,
    record_outputs,
    remove_earlier_outputs,
)
from ..io.run_lock import folder_lock
from ..model.decisions import decision
from .extras import import_extra
from .merge import SCORE_COLUMNS, write_merged

RAY_DIR = "ray"
# A cluster address is probed with one TCP connect first: an unreachable one fails in seconds, naming it,
# instead of ray.init retrying for minutes.
CONNECT_TIMEOUT_S = 5.0


class ClusterUnreachableError(AnomCLIPError, ConnectionError):
    """The Ray cluster at the given address does not answer."""


def cluster_endpoint(address: Optional[str]) -> Optional[tuple[str, int]]:
    """(host, port) of an explicit cluster address ("HOST:PORT", "ray://HOST:PORT"); None for a local or
    "auto" cluster, which Ray finds itself."""
    if not address or address in ("auto", "local"):
        return None
    text = address.split("://", 1)[1] if "://" in address else address
    host, _, port = text.rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ArgumentError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def check_reachable(address: Optional[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ClusterUnreachableError naming `address` unless a TCP connection to it opens within `timeout` seconds."""
    endpoint = cluster_endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as error:
        reason = "no answer" if isinstance(error, socket.timeout) else (error.strerror or str(error))
        raise ClusterUnreachableError(f"Ray cluster at {address} is unreachable ({reason} within {timeout:g} s); "
                                      "check the address and that the cluster is running") from None
ROW_COLUMNS = ("image_score", "normalized_score", "decision", "error", "threshold", "note")


class ScoringActor:
    """One Predictor per actor, built once; scores a batch (a dict of numpy columns) and adds ROW_COLUMNS."""

    def __init__(self, spec: PredictorSpec, overlay_dir: Optional[str] = None, root: Optional[str] = None,
                 save_maps: bool = False, overlays: str = "all"):
        self.predictor = spec.build()
        self.overlay_dir, self.root, self.save_maps, self.overlays = overlay_dir, root, save_maps, overlays

    def __call__(self, batch: dict) -> dict:
        if "bytes" in batch:
            items = [bytes(item) for item in batch["bytes"]]
        elif "path" in batch:
            items = [str(item) for item in batch["path"]]
        else:
            raise ArgumentError(f"a batch needs a 'path' or a 'bytes' column; got {sorted(batch)}")
        names = None
        if self.overlay_dir is not None and "path" in batch:
            names = [overlay_name(str(path), self.root) for path in batch["path"]]
        predictions = self.predictor.predict(items, names=names, save_maps=self.save_maps, overlays=self.overlays,
                                             overlay_dir=self.overlay_dir if names is not None else None)
        out = dict(batch)
        out.pop("bytes", None)  # the scores travel on, not the images
        out["image_score"] = np.array([_number(p.score) for p in predictions], dtype=np.float64)
        out["normalized_score"] = np.array([_number(p.normalized_score) for p in predictions], dtype=np.float64)
        out["decision"] = np.array([p.decision for p in predictions], dtype=object)
        out["error"] = np.array([p.error or "" for p in predictions], dtype=object)
        out["threshold"] = np.full(len(predictions), _number(self.predictor.threshold))
        out["note"] = np.array([self.predictor.note] * len(predictions), dtype=object)
        return out


def _number(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def score_dataset(dataset, spec: PredictorSpec, *, actors: int = 2, num_gpus: float = 0, batch_size: int = 16,
                  overlay_dir: Optional[str] = None, root: Optional[str] = None, save_maps: bool = False,
                  overlays: str = "all"):
    """`dataset` (a 'path' and/or 'bytes' column, any other columns pass through) with ROW_COLUMNS added: a
    NaN image_score and the reason in `error` for an input that could not be scored."""
    if actors < 1:
        raise ArgumentError(f"actors={actors}; expected >= 1")
    ray_data = import_extra("ray.data", "ray")
    kwargs = {"spec": spec, "overlay_dir": overlay_dir, "root": root, "save_maps": save_maps, "overlays": overlays}
    return dataset.map_batches(ScoringActor, fn_constructor_kwargs=kwargs,
                               batch_size=batch_size, batch_format="numpy",
                               compute=ray_data.ActorPoolStrategy(size=actors),
                               num_cpus=1, num_gpus=num_gpus or None)


def predict_with_ray(spec: PredictorSpec, paths: Sequence[str], output_dir: str, *, address: Optional[str] = None,
                     actors: int = 2, num_gpus: float = 0, batch_size: int = 16, output_format: str = "parquet",
                     root: Optional[str] = None, not_images: Sequence[str] = (),
                     unlistable: Sequence[tuple[str, str]] = (), overlays: str = "all",
                     save_maps: bool = False) -> PredictionResult:
    """`anomclip predict --engine ray`: see the module docstring. address: a running cluster ("auto",
    "ray://host:10001"); default: a local one started (and stopped) here."""
    if output_format not in ("parquet", "csv"):
        raise ArgumentError(f"output_format={output_format!r}; expected 'parquet' or 'csv'")
    ray = import_extra("ray", "ray")
    import ray.data  # noqa: F401,F811 - the Data library of the extra

    # Names that are not UTF-8 cannot travel in Ray's (Arrow) tables: reported as local runs report them.
    unnamed = [path for path in paths if not printable(path)]
    paths = [path for path in paths if printable(path)]
    started = not ray.is_initialized()
    if started:
        check_reachable(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        os.makedirs(output_dir, exist_ok=True)
        with folder_lock(output_dir, "predict run"):
            remove_earlier_outputs(output_dir)  # what the earlier run recorded, the ray/ row files included
            table_dir = os.path.join(output_dir, RAY_DIR)
            items = ray.data.from_items([{"index": i, "path": path} for i, path in enumerate(paths)])
            earlier = set(_row_files(table_dir, output_format))
            scored = score_dataset(items, spec, actors=actors, num_gpus=num_gpus, batch_size=batch_size,
                                   overlay_dir=output_dir, root=root, save_maps=save_maps, overlays=overlays)
            getattr(scored, f"write_{output_format}")(table_dir)  # streamed: blocks are written as they finish
            tables = [path for path in _row_files(table_dir, output_format) if path not in earlier]
            result = _merge_rows(output_dir, tables, output_format, not_images, unlistable, unnamed)
            record_outputs(output_dir, [*(os.path.relpath(path, output_dir) for path in tables),
                                        *(os.path.relpath(path, output_dir) for path in _pictures(
                                            output_dir, result, root, overlays, save_maps)),
                                        SCORES_FILE, *([ERRORS_FILE] if result.failures else [])])
            return result
    finally:
        if started:
            ray.shutdown()


def _row_files(table_dir: str, output_format: str) -> list[str]:
    return sorted(glob.glob(os.path.join(table_dir, f"*.{output_format}")))


def _pictures(output_dir: str, result: PredictionResult, root, overlays: str, save_maps: bool) -> list[str]:
    """The overlays, maps and masks the actors wrote for the scored rows (those that exist)."""
    found = []
    for path, score in result.scores.items():
        name = overlay_name(path, root)
        stem = os.path.splitext(name)[0]
        candidates = []
        if overlays == "all" or (overlays == "anomalous" and decision(score, result.threshold) == "anomalous"):
            candidates.append(os.path.join(output_dir, OVERLAY_DIR, name))
        if save_maps:
            candidates += [os.path.join(output_dir, MAPS_DIR, stem + ".npy"),
                           os.path.join(output_dir, MASKS_DIR, stem + ".png")]
        found += [candidate for candidate in candidates if os.path.isfile(candidate)]
    return found


def read_rows(table_dir, output_format: str = "parquet"):
    """The rows Ray wrote (the files under a folder, or a list of files), as one pandas DataFrame sorted by
    input index."""
    import pandas as pd

    files = _row_files(table_dir, output_format) if isinstance(table_dir, (str, os.PathLike)) else list(table_dir)
    if output_format == "parquet":
        frames = [pd.read_parquet(path) for path in files]
    else:
        numbers = {name: [""] for name in ("image_score", "normalized_score", "threshold")}
        frames = [pd.read_csv(path, keep_default_na=False, na_values=numbers,
                              dtype={"path": str, "decision": str, "error": str, "note": str}) for path in files]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["index", "path", *ROW_COLUMNS])
    return frame.sort_values("index", kind="stable").reset_index(drop=True)


def _merge_rows(output_dir: str, table_dir, output_format: str, not_images,
                unlistable, unnamed: Sequence[str] = ()) -> PredictionResult:
    frame = read_rows(table_dir, output_format)
    note = str(frame["note"].iloc[0]) if len(frame) else ""
    header = SCORE_COLUMNS + (["note"] if note else [])
    rows, failures = [], [(path, NOT_UTF8) for path in unnamed]
    for record in frame.itertuples(index=False):
        if record.error:
            failures.append((record.path, record.error))
            continue
        normalized = "" if math.isnan(float(record.normalized_score)) else f"{float(record.normalized_score):.6f}"
        rows.append([record.path, f"{float(record.image_score):.6f}", normalized, record.decision]
                    + ([note] if note else []))
    thresholds = frame["threshold"].dropna() if len(frame) else []
    threshold = float(thresholds.iloc[0]) if len(thresholds) else None
    return write_merged(output_dir, header, rows, failures, threshold=threshold, not_images=not_images,
                        unlistable=unlistable)
