"""`Predictor`: the one scoring path of the package.

It holds one category, loaded once, on one engine: the PyTorch model (`from_model`, `from_pretrained`) or an
exported model on ONNX Runtime (`from_onnx`). It scores a batch of paths, PIL images, uint8 arrays or encoded
image bytes and answers, per input in input order, the score, the normalised score (the stored threshold at
0.5, `decisions.normalized_score`), the decision (`decisions.decision`) and, on request, the anomaly map or the
path of a written overlay. `anomclip predict`, `predict_files`, the pipeline, the web app, accelerate shards,
Ray actors and `anomclip serve` all score through it.

```python
predictor = Predictor.from_pretrained("anomclip_demo/base", "runs/fit/adapter")
results = predictor.predict(["a.png", pil_image, uint8_array, png_bytes], maps=True)
results[0].score, results[0].decision, results[0].normalized_score, results[0].anomaly_map.shape
predictor.write(paths, "runs/out")   # scores.csv, overlays/, errors.csv, as `anomclip predict`
```
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io.batches import ScoredBatch
from ..io.image_io import (
    ImageReadError,
    PathOrImage,
    check_pixel_count,
    display_path,
    load_image,
)
from ..io.pixel_arrays import as_pil
from ..model.decisions import decision, normalized_score

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]
# (images, batch_size, progress, skip_unreadable) -> ScoredBatch per batch: `score_images` or the ONNX detector's
BatchSource = Callable[..., Iterator[ScoredBatch]]
BYTES_NAME = "<image bytes>"


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


def image_from_bytes(data: bytes, name: str = BYTES_NAME) -> Image.Image:
    """An RGB PIL image from encoded bytes (PNG, JPEG, ...), with the decoding limits of `image_io`
    (pixel count checked from the header first); ImageReadError naming `name` otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageReadError(f"{name}: no image data (expected the bytes of a PNG, JPEG, BMP or TIFF file)")
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            check_pixel_count(image.size, name)
            image.load()
            return load_image(image)
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {name}: {len(data):,} bytes that are no image format PIL knows "
                             "(expected PNG, JPEG, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {name}: {error}") from error


def as_image(item: ImageLike) -> PathOrImage:
    """A path (decoded later, by the scoring loop) or a PIL image, from any accepted input; ImageReadError
    (a ValueError) naming what was wrong otherwise."""
    if isinstance(item, (str, os.PathLike, Image.Image)):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return image_from_bytes(item)
    if isinstance(item, np.ndarray):
        try:
            return as_pil(item)
        except (ValueError, TypeError) as error:
            raise ImageReadError(f"array of shape {item.shape} ({item.dtype}): {error}") from error
    raise ImageReadError(f"cannot score a {type(item).__name__}; expected a path, a PIL image, a uint8 "
                         "(H, W[, C]) array or encoded image bytes")


def _source_name(item) -> str:
    if isinstance(item, (str, os.PathLike)):
        return display_path(item)
    return BYTES_NAME if isinstance(item, (bytes, bytearray, memoryview)) else "<in-memory image>"


class Predictor:
    """One category on one engine, loaded once; see the module docstring.

    batches: the scoring loop to use (`score_images` bound to a model, or an ONNX detector's `score_batches`);
    threshold / pixel_threshold: the decision and map thresholds (None: scores only); note: the PIPELINE CHECK
    label of a random base ("" otherwise), written into every overlay and scores.csv.
    """

    def __init__(self, batches: BatchSource, *, category: Optional[str], threshold: Optional[float],
                 pixel_threshold: Optional[float] = None, note: str = "", batch_size: int = 16,
                 engine: str = "torch", model=None, score_pixels: Optional[Callable] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        self._batches, self._score_pixels = batches, score_pixels
        self.category, self.threshold, self.pixel_threshold = category, threshold, pixel_threshold
        self.note, self.batch_size, self.engine, self.model = note, batch_size, engine, model

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, category: Optional[str] = None, *, threshold: Optional[float] = None,
                   pixel_threshold: Optional[float] = None, precision: str = "fp32", autocast_dtype=None,
                   output_size: Optional[int] = None, note: Optional[str] = None, batch_size: int = 16) -> "Predictor":
        """A loaded AnomCLIPModel's category (default: the active one); thresholds default to the stored ones.
        precision: "fp32", "bf16", "fp16" or "auto" for the vision tower (`autocast_dtype`, a torch dtype, wins)."""
        from ..io.labels import pipeline_check_note
        from ..model.precision import resolve_precision
        from .batch_scoring import score_images, score_pixel_values

        state = model.get_category(category)
        low = autocast_dtype if autocast_dtype is not None else resolve_precision(precision, model.device, model)

        def batches(images, batch_size, progress, skip_unreadable):
            return score_images(model, images, batch_size=batch_size, output_size=output_size, category=state.name,
                                progress=progress, skip_unreadable=skip_unreadable, autocast_dtype=low)

        def score_pixels(pixel_values):
            return score_pixel_values(model, pixel_values, state.name, output_size, low)

        return cls(batches, category=state.name,
                   threshold=state.metadata.get("decision_threshold") if threshold is None else float(threshold),
                   pixel_threshold=(state.metadata.get("pixel_threshold") if pixel_threshold is None
                                    else float(pixel_threshold)),
                   note=pipeline_check_note(model) if note is None else note, batch_size=batch_size,
                   engine="torch", model=model, score_pixels=score_pixels)

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
                  batch_size: int = 16) -> "Predictor":
        """An exported category (`anomclip export`) on ONNX Runtime: no torch needed."""
        from ..export.runtime import OnnxAnomalyDetector

        detector = OnnxAnomalyDetector(path, threshold=threshold, providers=providers)

        def batches(images, batch_size, progress, skip_unreadable):
            return detector.score_batches(images, batch_size=batch_size, progress=progress,
                                          skip_unreadable=skip_unreadable)

        return cls(batches, category=detector.category, threshold=detector.threshold,
                   pixel_threshold=detector.pixel_threshold, note=detector.note, batch_size=batch_size,
                   engine="onnx", model=detector,
                   score_pixels=lambda pixels: detector.run(pixels if isinstance(pixels, dict) else np.asarray(pixels)))

    # ------------------------------------------------------------------ scoring
    def outcome(self, score: float, threshold: Optional[float] = None) -> dict:
        """score, normalized_score, decision and threshold of one image score, at `threshold` (default: this
        predictor's, the stored one unless overridden)."""
        decide_at = self.threshold if threshold is None else threshold
        return {"score": float(score), "normalized_score": normalized_score(score, decide_at),
                "decision": decision(score, decide_at), "threshold": decide_at}

    def score_pixel_values(self, pixel_values) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,), maps (B, H, W)) of already preprocessed pixel values (the pipeline's path)."""
        return self._score_pixels(pixel_values)

    def score_batches(self, images: Sequence[PathOrImage], batch_size: Optional[int] = None, progress: bool = False,
                      skip_unreadable: bool = True) -> Iterator[ScoredBatch]:
        """The scoring loop's batches (`io.batches.scored_batches`) of paths or PIL images."""
        return self._batches(images, batch_size or self.batch_size, progress, skip_unreadable)

    def predict(self, images: Union[ImageLike, Sequence[ImageLike]], *, batch_size: Optional[int] = None,
                maps: bool = False, overlay_dir: Optional[str] = None, names: Optional[Sequence[str]] = None,
                save_maps: bool = False, progress: bool = False) -> list[Prediction]:
        """One Prediction per input, in input order; an input that cannot be decoded gets its error, the
        others are scored. overlay_dir: also write each overlay PNG there (overlays/NAME, NAME from `names`,
        default the input's file name or its index; with save_maps also maps/ and masks/) and return its path."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if names is not None and len(names) != len(items):
            raise ValueError(f"{len(names)} names for {len(items)} images")
        results: list[Optional[Prediction]] = [None] * len(items)
        usable, positions = [], []
        for index, item in enumerate(items):
            try:
                usable.append(as_image(item))
                positions.append(index)
            except ImageReadError as error:
                results[index] = self._failed(index, item, str(error))
        for batch in self.score_batches(usable, batch_size=batch_size, progress=progress):
            for local, error in batch.failures:
                index = positions[local]
                results[index] = self._failed(index, items[index], error)
            for offset, local in enumerate(batch.indices):
                index = positions[local]
                results[index] = self._scored(index, items[index], batch, offset, maps, overlay_dir,
                                              None if names is None else names[index], save_maps)
        return results  # type: ignore[return-value]

    __call__ = predict

    def _failed(self, index: int, item, error: str) -> Prediction:
        return Prediction(index=index, source=_source_name(item), score=None, normalized_score=None, decision="",
                          threshold=self.threshold, error=error)

    def _scored(self, index: int, item, batch: ScoredBatch, offset: int, maps: bool, overlay_dir: Optional[str],
                name: Optional[str], save_maps: bool) -> Prediction:
        outcome = self.outcome(float(batch.image_scores[offset]))
        overlay = None
        if overlay_dir is not None:
            from .prediction import write_image_outputs

            if name is None:
                name = (os.path.splitext(os.path.basename(os.fspath(item)))[0] if isinstance(item, (str, os.PathLike))
                        else f"{index:06d}") + ".png"
            overlay = write_image_outputs(overlay_dir, name, batch.images[offset], batch.anomaly_maps[offset],
                                          outcome["score"], threshold=self.threshold,
                                          pixel_threshold=self.pixel_threshold, note=self.note, save_maps=save_maps)
        return Prediction(index=index, source=_source_name(item), score=outcome["score"],
                          normalized_score=outcome["normalized_score"], decision=outcome["decision"],
                          threshold=self.threshold, anomaly_map=batch.anomaly_maps[offset] if maps else None,
                          overlay=overlay)

    # ------------------------------------------------------------------ files
    def write(self, paths: Sequence[str], output_dir: str, *, progress: bool = True, **write_options):
        """Score image files and write scores.csv, overlays/ and errors.csv into `output_dir`, as `anomclip
        predict` (`prediction.write_predictions`: its lock, atomic CSVs, removal of an earlier run's outputs).
        write_options: root, ground_truth, extra_columns, keep_maps, not_images, unlistable, save_maps."""
        from .prediction import write_scored

        return write_scored(lambda named: self.score_batches(named, progress=progress), paths, output_dir,
                            threshold=self.threshold, pixel_threshold=self.pixel_threshold, note=self.note,
                            **write_options)


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

    def __post_init__(self):
        if self.onnx is None and not (self.base and self.category):
            raise ValueError("a predictor needs base and category (a PyTorch model), or onnx (an exported one)")

    def build(self) -> Predictor:
        if self.onnx is not None:
            return Predictor.from_onnx(self.onnx, threshold=self.threshold, batch_size=self.batch_size)
        return Predictor.from_pretrained(self.base, self.category, revision=self.revision, device=self.device,
                                         precision=self.precision, threshold=self.threshold,
                                         output_size=self.output_size, batch_size=self.batch_size,
                                         memory_backbone=self.memory_backbone)

    def settings(self) -> dict:
        """What decides the scores (for a run's plan: a rerun with other settings starts afresh)."""
        return {"base": self.base, "category": self.category, "onnx": self.onnx, "revision": self.revision,
                "precision": self.precision, "threshold": self.threshold, "output_size": self.output_size,
                "memory_backbone": self.memory_backbone}
