"""`Predictor`: the one scoring path of the package.

It holds one category on one engine (`inference.engines`: the PyTorch model via `from_model` /
`from_pretrained`, an exported model on ONNX Runtime via `from_onnx`). It scores paths, PIL images, uint8
arrays or encoded image bytes and answers, per input in input order, the score, the normalised score (the
stored threshold at 0.5, `decisions.normalized_score`), the decision (`decisions.decision`) and, on request,
the anomaly map or the path of a written overlay. `anomclip predict`, `predict_files`, the pipeline, the web
app, accelerate shards, Ray actors and `anomclip serve` all score through it.

```python
predictor = Predictor.from_pretrained("anomclip_demo/base", "runs/fit/adapter")
results = predictor.predict(["a.png", pil_image, uint8_array, png_bytes], maps=True)
results[0].score, results[0].decision, results[0].normalized_score, results[0].anomaly_map.shape
predictor.write(paths, "runs/out", overlays="anomalous")   # scores.csv, overlays/, errors.csv
```

The scoring loop is a pipeline: a pool of threads decodes the next inputs (PIL releases the GIL) while the
engine scores a batch, and `write` draws and saves pictures in background threads (`writers`). Each input is
isolated: one that fails to decode, to preprocess or to score (a NaN score), or whose whole batch fails in the
engine (then the batch is scored again input by input), gets its own error; the others are scored as if it
were not there.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from ..io.batches import ScoredBatch
from ..model.decisions import check_threshold, decision, normalized_score
from .engines.base import Engine
from .inputs import ImageLike, decode, find_inputs, printable, source_name
from .writers import (
    NOT_AN_IMAGE,
    NOT_UTF8,
    PredictionResult,
    PredictionWriter,
    check_overlays,
    write_image_outputs,
)
from ..errors import ArgumentError

NOT_FINITE = "the model scored this image NaN or infinite; no score is given (it would read as 'normal')"


def default_decode_workers() -> int:
    """Decoding threads: enough to keep one scoring loop fed, never more than the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


def _threshold(value, name: str = "threshold") -> Optional[float]:
    return check_threshold(float(value) if isinstance(value, np.generic) else value, name)


@dataclass
class Prediction:
    """One input's result; `error` is set (and the score None) when it could not be scored."""

    index: int
    source: str  # the path as text, or "<in-memory image>" / "<image bytes>"
    score: Optional[float]
    normalized_score: Optional[float]
    decision: str  # "anomalous" / "normal"; "" without a threshold or on error
    threshold: Optional[float]
    anomaly_map: Optional[np.ndarray] = None  # (H, W) float32, with maps=True
    overlay: Optional[str] = None  # the written overlay PNG, with overlay_dir
    error: Optional[str] = None

    def row(self) -> dict:
        """Flat fields for a table row (Ray Data, shards): no map, no image."""
        return {"index": self.index, "path": self.source, "image_score": self.score,
                "normalized_score": self.normalized_score, "decision": self.decision,
                "error": self.error or ""}


class Predictor:
    """One category on one engine, loaded once; see the module docstring.

    engine: an `inference.engines.Engine`; threshold / pixel_threshold: the decision and map thresholds
    (default: the stored ones; None stored: scores only); note: the PIPELINE CHECK label of a random base
    (default: the engine's), written into every overlay and scores.csv; decode_workers: decoding threads.
    """

    def __init__(self, engine: Engine, *, threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                 note: Optional[str] = None, batch_size: int = 16, decode_workers: Optional[int] = None):
        if batch_size < 1:
            raise ArgumentError(f"batch_size={batch_size}; expected >= 1")
        info = engine.description
        self.engine = engine
        self.category = info.category
        self.threshold = info.threshold if threshold is None else _threshold(threshold)
        self.pixel_threshold = (info.pixel_threshold if pixel_threshold is None
                                else _threshold(pixel_threshold, "pixel_threshold"))
        self.note = info.note if note is None else note
        self.batch_size = batch_size
        self.decode_workers = default_decode_workers() if decode_workers is None else max(0, int(decode_workers))
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()  # predict() may be called from several threads (a server's)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, category: Optional[str] = None, *, threshold: Optional[float] = None,
                   pixel_threshold: Optional[float] = None, precision: str = "fp32", autocast_dtype=None,
                   output_size: Optional[int] = None, note: Optional[str] = None, batch_size: int = 16,
                   decode_workers: Optional[int] = None, tile=None, tile_overlap=None) -> "Predictor":
        """A loaded AnomCLIPModel's category (default: the active one); thresholds default to the stored ones.
        precision: "fp32", "bf16", "fp16" or "auto" for the vision tower (`autocast_dtype`, a torch dtype or a
        PrecisionChoice, wins), resolved once. tile, tile_overlap: may only repeat the tiling the category's fit
        used (a tiled category is scored in tiles whether or not they are given)."""
        from ..io.tiling import resolve_tiling
        from .engines.torch_engine import TiledTorchEngine, TorchEngine

        tiling = resolve_tiling(model.get_category(category).metadata.get("tiling"), tile, tile_overlap)
        options = dict(precision=precision, autocast_dtype=autocast_dtype, output_size=output_size)
        engine = (TorchEngine(model, category, **options) if tiling is None
                  else TiledTorchEngine(model, category, tiling=tiling, **options))
        return cls(engine, threshold=threshold, pixel_threshold=pixel_threshold, note=note, batch_size=batch_size,
                   decode_workers=decode_workers)

    @classmethod
    def from_pretrained(cls, base, category: str, *, revision: Optional[str] = None, device: str = "cpu",
                        memory_backbone: Optional[str] = None, **options) -> "Predictor":
        """Load the base (folder, Hub id, CLIP id) and the category adapter (folder or Hub repo id) once;
        memory_backbone: a DINOv2 memory (Hub id or folder) for a base saved without it; `options` as
        `from_model`."""
        from ..model.modeling_anomclip import AnomCLIPModel

        extra = {} if memory_backbone is None else {"memory_backbone": memory_backbone}
        model = AnomCLIPModel.from_base(base, **extra).to(device)
        state = model.load_category(category, revision=revision)
        return cls.from_model(model, state.name, **options)

    @classmethod
    def from_onnx(cls, path: str, *, threshold: Optional[float] = None, providers: Optional[Sequence[str]] = None,
                  batch_size: int = 16, runtime: str = "onnxruntime", decode_workers: Optional[int] = None,
                  tile=None, tile_overlap=None, **runtime_options) -> "Predictor":
        """An exported category (`anomclip export`) on a runtime of `engines.ENGINES` (default ONNX Runtime):
        no torch needed. providers: ONNX Runtime execution providers. tile, tile_overlap: may only repeat the
        tiling the export records."""
        from ..io.tiling import resolve_tiling
        from .engines import exported_engine

        if providers is not None:
            runtime_options["providers"] = providers
        engine = exported_engine(runtime)(path, threshold=_threshold(threshold), **runtime_options)
        resolve_tiling(getattr(engine, "detector", None) and engine.detector.tiling, tile, tile_overlap)
        return cls(engine, batch_size=batch_size, decode_workers=decode_workers)

    @property
    def model(self):
        """The engine's loaded model (an AnomCLIPModel for the torch engine, the detector for an exported one)."""
        return getattr(self.engine, "model", None) or getattr(self.engine, "detector", None)

    # ------------------------------------------------------------------ scoring
    def outcome(self, score: float, threshold: Optional[float] = None) -> dict:
        """score, normalized_score, decision and threshold of one image score, at `threshold` (default: this
        predictor's, the stored one unless overridden)."""
        decide_at = self.threshold if threshold is None else threshold
        return {"score": float(score), "normalized_score": normalized_score(score, decide_at),
                "decision": decision(score, decide_at), "threshold": decide_at}

    def score_pixel_values(self, pixel_values) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,), maps (B, H, W)) of already preprocessed pixel values (the pipeline's path)."""
        return self.engine.score(pixel_values)

    def score_batches(self, images: Sequence[ImageLike], batch_size: Optional[int] = None, progress: bool = False,
                      description: str = "scoring") -> Iterator[ScoredBatch]:
        """Scored batches in input order: `indices` of the scored inputs, their decoded images, scores and
        maps, and `failures` ((index, why) of the inputs that could not be scored since the last batch)."""
        from tqdm.auto import tqdm

        size = batch_size or self.batch_size
        if size < 1:
            raise ArgumentError(f"batch_size={size}; expected >= 1")
        indices, decoded, failures = [], [], []
        with tqdm(total=len(images), desc=description, disable=not progress, unit="img") as bar:
            for index, image, error in self._decoded(images, lookahead=2 * size):
                if error is not None:
                    failures.append((index, error))
                    bar.update(1)  # now: a run of bad files moves the bar too
                else:
                    indices.append(index)
                    decoded.append(image)
                # Batches hold `size` decoded images whatever failed around them, so a bad input changes no
                # other input's batch (and no score).
                if len(decoded) == size:
                    yield self._scored(indices, decoded, failures)
                    bar.update(len(indices))
                    indices, decoded, failures = [], [], []
            if decoded or failures:
                yield self._scored(indices, decoded, failures)
                bar.update(len(indices))

    def _decoded(self, items: Sequence[ImageLike], lookahead: int) -> Iterator[tuple]:
        """(index, RGB image or None, error or None) per input in input order; decoded ahead by the pool."""
        def one(index):
            try:
                return index, decode(items[index]), None
            except ValueError as error:  # decode turns every failure into an ImageReadError
                return index, None, str(error)

        if self.decode_workers == 0 or len(items) <= 1:
            yield from map(one, range(len(items)))
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="anomclip-decode")
        pending: collections.deque = collections.deque()
        upcoming = iter(range(len(items)))
        for index in upcoming:  # a bounded queue: at most `lookahead` decoded images wait for the engine
            pending.append(self._pool.submit(one, index))
            if len(pending) >= lookahead:
                break
        while pending:
            yield pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(self._pool.submit(one, following))

    def _scored(self, indices: list, images: list, failures: list) -> ScoredBatch:
        """One batch through the engine; a batch that fails is scored again input by input, so only the input
        that fails is reported; a non-finite score or map fails its own input."""
        scores, maps, problems = self._score_isolated(images)
        keep = [i for i, problem in enumerate(problems) if problem is None]
        failures = sorted(failures + [(indices[i], problem) for i, problem in enumerate(problems) if problem])
        if isinstance(maps, list):  # a tiled engine's maps of images of different sizes
            kept_maps = [maps[i] for i in keep]
        else:
            kept_maps = maps[keep] if len(images) else np.zeros((0, 0, 0), np.float32)
        return ScoredBatch(indices=[indices[i] for i in keep], images=[images[i] for i in keep],
                           image_scores=scores[keep] if len(images) else np.zeros(0, np.float32),
                           anomaly_maps=kept_maps,
                           failures=failures)

    def _score_isolated(self, images: list) -> tuple[np.ndarray, np.ndarray, list]:
        """(scores, maps, problem or None per image)."""
        if not images:
            return np.zeros(0, np.float32), np.zeros((0, 0, 0), np.float32), []
        try:
            scores, maps = self.engine.score(self.engine.preprocess(images))
            scores = np.asarray(scores, np.float32).reshape(-1)
            if isinstance(maps, list):  # a tiled engine: one map per image at its own size
                maps = [np.asarray(m, np.float32) for m in maps]
                if scores.shape[0] != len(images) or len(maps) != len(images) or any(m.ndim != 2 for m in maps):
                    raise ArgumentError(f"the engine answered {scores.shape[0]} scores and {len(maps)} maps for "
                                     f"{len(images)} images")
                finite = [bool(np.isfinite(score) and np.isfinite(m).all()) for score, m in zip(scores, maps)]
                return scores, maps, [None if ok else NOT_FINITE for ok in finite]
            maps = np.asarray(maps, np.float32)
            if scores.shape[0] != len(images) or maps.ndim != 3 or maps.shape[0] != len(images):
                raise ArgumentError(f"the engine answered {scores.shape[0]} scores and maps of shape {maps.shape} for "
                                 f"{len(images)} images")
        except Exception as error:  # noqa: BLE001 - one input's failure must not take its neighbours down
            if len(images) == 1:
                return np.zeros(1, np.float32), np.zeros((1, 1, 1), np.float32), [_engine_failure(error)]
            parts = [self._score_isolated([image]) for image in images]
            good = next((part for part in parts if part[2][0] is None), parts[0])
            shape = good[1].shape[1:]
            if len({part[1].shape[1:] for part in parts if part[2][0] is None}) > 1:  # tiled: sizes differ
                return (np.concatenate([part[0] for part in parts]), [part[1][0] for part in parts],
                        [part[2][0] for part in parts])
            return (np.concatenate([part[0] for part in parts]),
                    np.concatenate([part[1] if part[1].shape[1:] == shape else np.zeros((1, *shape), np.float32)
                                    for part in parts]),
                    [part[2][0] for part in parts])
        finite = np.isfinite(scores) & np.isfinite(maps.reshape(len(images), -1)).all(axis=1)
        return scores, maps, [None if ok else NOT_FINITE for ok in finite]

    def predict(self, images: Union[ImageLike, Sequence[ImageLike]], *, batch_size: Optional[int] = None,
                maps: bool = False, overlay_dir: Optional[str] = None, names: Optional[Sequence[str]] = None,
                save_maps: bool = False, progress: bool = False, overlays: str = "all") -> list[Prediction]:
        """One Prediction per input, in input order; an input that cannot be scored gets its error, the
        others are scored. overlay_dir: also write each overlay PNG there (overlays/NAME, NAME from `names`,
        default the input's file name or its index; with save_maps also maps/ and masks/) and return its path;
        overlays: which inputs get one there ("all", "anomalous", "none")."""
        check_overlays(overlays)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if names is not None and len(names) != len(items):
            raise ArgumentError(f"{len(names)} names for {len(items)} images")
        results: list[Optional[Prediction]] = [None] * len(items)
        for batch in self.score_batches(items, batch_size=batch_size, progress=progress):
            for index, error in batch.failures:
                results[index] = self._failed(index, items[index], error)
            for offset, index in enumerate(batch.indices):
                results[index] = self._prediction(index, items[index], batch, offset, maps, overlay_dir,
                                                  None if names is None else names[index], save_maps, overlays)
        return results  # type: ignore[return-value]

    __call__ = predict

    def _failed(self, index: int, item, error: str) -> Prediction:
        return Prediction(index=index, source=source_name(item), score=None, normalized_score=None, decision="",
                          threshold=self.threshold, error=error)

    def _prediction(self, index: int, item, batch: ScoredBatch, offset: int, maps: bool, overlay_dir: Optional[str],
                    name: Optional[str], save_maps: bool, overlays: str = "all") -> Prediction:
        outcome = self.outcome(float(batch.image_scores[offset]))
        overlay = None
        drawn = overlays == "all" or (overlays == "anomalous" and outcome["decision"] == "anomalous")
        if overlay_dir is not None and (drawn or save_maps):
            if name is None:
                name = (os.path.splitext(os.path.basename(os.fspath(item)))[0] if isinstance(item, (str, os.PathLike))
                        else f"{index:06d}") + ".png"
            written = write_image_outputs(overlay_dir, name, batch.images[offset], batch.anomaly_maps[offset],
                                          outcome["score"], threshold=self.threshold,
                                          pixel_threshold=self.pixel_threshold, note=self.note, save_maps=save_maps,
                                          overlay=drawn)
            overlay = written[0] if drawn else None
        return Prediction(index=index, source=source_name(item), score=outcome["score"],
                          normalized_score=outcome["normalized_score"], decision=outcome["decision"],
                          threshold=self.threshold, anomaly_map=batch.anomaly_maps[offset] if maps else None,
                          overlay=overlay)

    # ------------------------------------------------------------------ files
    def write(self, paths: Sequence[str], output_dir: str, *, progress: bool = True, overlays: str = "all",
              save_maps: bool = False, root: Optional[str] = None, not_images: Sequence[str] = (),
              unlistable: Sequence[tuple[str, str]] = (), writer_workers: Optional[int] = None,
              **writer_options) -> PredictionResult:
        """Score image files and write scores.csv, overlays/ (all, anomalous or none), errors.csv and the run
        manifest into `output_dir`, as `anomclip predict` (see `writers`). Inputs that cannot be scored, files
        with undecodable names, the `not_images` found beside the images and the `unlistable` (folder, why)
        pairs are reported in errors.csv and the result, never fatal. writer_options: ground_truth,
        extra_columns, keep_maps (see `writers.PredictionWriter`)."""
        paths = list(paths)
        named = [path for path in paths if printable(path)]
        workers = writer_workers if writer_workers is not None else max(1, self.decode_workers)
        writer = PredictionWriter(output_dir, named, root=root, threshold=self.threshold,
                                  pixel_threshold=self.pixel_threshold, note=self.note, overlays=overlays,
                                  save_maps=save_maps, workers=workers, **writer_options)
        with writer:
            for path in paths:
                if not printable(path):
                    writer.fail(path, NOT_UTF8)
            for batch in self.score_batches(named, progress=progress):
                for index, error in batch.failures:
                    writer.fail(named[index], error)
                for offset, index in enumerate(batch.indices):
                    writer.add(named[index], batch.images[offset], batch.anomaly_maps[offset],
                               batch.image_scores[offset])
            for folder, why in unlistable:
                writer.fail(folder, why)
            for path in not_images:
                writer.fail(path, NOT_AN_IMAGE)
        return writer.result

    def close(self) -> None:
        """Stop the decoding threads (they also stop when the Predictor is collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def _engine_failure(error: Exception) -> str:
    message = str(error) or type(error).__name__
    return f"scoring failed: {message}" if not message.lower().startswith(("cannot", "scoring")) else message


# ---------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class PredictorSpec:
    """How to load a Predictor, as plain values: what a Ray actor, an accelerate process or a server worker
    builds in its own process. Either base + category (PyTorch) or onnx (an exported model)."""

    base: Optional[str] = None
    category: Optional[str] = None
    onnx: Optional[str] = None
    revision: Optional[str] = None
    device: str = "cpu"
    precision: str = "fp32"
    threshold: Optional[float] = None
    output_size: Optional[int] = None
    batch_size: int = 16
    memory_backbone: Optional[str] = None  # a DINOv2 memory for a base saved without one
    runtime: str = "onnxruntime"  # the engine of an exported model (engines.ENGINES)
    tile: Optional[object] = None  # --tile / --tile-overlap: may only repeat what the adapter's fit used
    tile_overlap: Optional[object] = None

    def __post_init__(self):
        if self.onnx is None and not (self.base and self.category):
            raise ArgumentError("a predictor needs base and category (a PyTorch model), or onnx (an exported one)")

    def build(self) -> Predictor:
        if self.onnx is not None:
            return Predictor.from_onnx(self.onnx, threshold=self.threshold, batch_size=self.batch_size,
                                       runtime=self.runtime, tile=self.tile, tile_overlap=self.tile_overlap)
        return Predictor.from_pretrained(self.base, self.category, revision=self.revision, device=self.device,
                                         precision=self.precision, threshold=self.threshold,
                                         output_size=self.output_size, batch_size=self.batch_size,
                                         memory_backbone=self.memory_backbone, tile=self.tile,
                                         tile_overlap=self.tile_overlap)

    def settings(self) -> dict:
        """What decides the scores (for a run's plan: a rerun with other settings starts afresh)."""
        return {"base": self.base, "category": self.category, "onnx": self.onnx, "revision": self.revision,
                "precision": self.precision, "threshold": self.threshold, "output_size": self.output_size,
                "memory_backbone": self.memory_backbone, "runtime": self.runtime, "tile": self.tile,
                "tile_overlap": self.tile_overlap}


# ---------------------------------------------------------------------------------------------- shortcuts
def predict_files(model, paths: Sequence[str], output_dir: str, *, category: Optional[str] = None,
                  threshold: Optional[float] = None, pixel_threshold: Optional[float] = None, batch_size: int = 16,
                  output_size: Optional[int] = None, autocast_dtype=None, precision: str = "fp32",
                  progress: bool = True, note: Optional[str] = None, **write_options) -> PredictionResult:
    """`Predictor.from_model(model, category, ...).write(paths, output_dir, ...)`: scores.csv, overlays/ and
    errors.csv of `paths` in `output_dir`. write_options: overlays, save_maps, root, ground_truth,
    extra_columns, keep_maps, not_images, unlistable (see `Predictor.write`)."""
    predictor = Predictor.from_model(model, category, threshold=threshold, pixel_threshold=pixel_threshold,
                                     precision=precision, autocast_dtype=autocast_dtype, output_size=output_size,
                                     note=note, batch_size=batch_size)
    try:
        return predictor.write(paths, output_dir, progress=progress, **write_options)
    finally:
        predictor.close()


def predict_folder(model, images_dir: str, output_dir: str, **kwargs) -> PredictionResult:
    """`predict_files` over every image under `images_dir` (recursive); the other files are reported."""
    images, others, unlistable = find_inputs(images_dir, exclude=output_dir)
    return predict_files(model, images, output_dir, root=images_dir, not_images=others, unlistable=unlistable,
                         **kwargs)


__all__ = ["Prediction", "PredictionResult", "Predictor", "PredictorSpec", "predict_files", "predict_folder",
           "NOT_FINITE"]
