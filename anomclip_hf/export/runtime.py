"""`OnnxAnomalyDetector`: score images with an exported category on ONNX Runtime.

Needs only numpy, pillow and onnxruntime (no torch, no transformers; tqdm for `score_batches`): the
preprocessing is the package's own numpy one (`pixel_arrays`), so the graph gets the numbers the PyTorch model
would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from ..io.labels import PIPELINE_CHECK_NOTE
from ..io.pixel_arrays import (
    RESAMPLE_NAMES,
    ImageInput,
    as_pil,
    pixel_array,
    pixel_range_problem,
)
from ..io.tiling import (
    StitchedImage,
    TilingSpec,
    plan_tiles,
    stitch_image,
    tile_crops,
    tile_sigma,
    whole_image,
    whole_image_sigma,
)
from ..model.decisions import check_sensitivity, check_threshold, decision, resolve_threshold
from .extras import import_extra
from .sidecar import (
    INPUT_NAME,
    MEMORY_INPUT_NAME,
    OUTPUT_NAMES,
    TILE_OUTPUT_NAMES,
    check_graph,
    read_sidecar,
    sidecar_path,
)
from ..errors import ExportError

TILE_BATCH = 64  # tiles per run of a tiled graph

if TYPE_CHECKING:
    from ..io.batches import ScoredBatch


@dataclass
class OnnxPrediction:
    image_scores: np.ndarray  # (B,) float32 in [0, 1], higher = more anomalous
    anomaly_maps: np.ndarray  # (B, H, W) float32 in [0, 1]
    decisions: list[str]  # "anomalous" / "normal" at the decision threshold; "" without one


class OnnxAnomalyDetector:
    """An exported category (`anomclip export`): `detector(images)` -> scores, decisions and maps.

    path: the .onnx file; its sidecar (`path + ".json"`) gives preprocessing and thresholds.
    threshold: the image decision threshold (default: the sidecar's sensitivity over the category's stored
        threshold; sensitivity 0.5, the stored threshold itself, unless the sidecar says otherwise).
    sensitivity: a sensitivity in [0, 1] over the stored threshold instead (`model.decisions`).
    providers: ONNX Runtime execution providers (default: CPU).
    """

    def __init__(self, path: str, threshold: Optional[float] = None, providers: Optional[Sequence[str]] = None,
                 session_options=None, sensitivity: Optional[float] = None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.path = path
        self.settings = read_sidecar(path)
        with open(path, "rb") as handle:  # hashed, then checked against the sidecar once the session is open
            graph = handle.read()
        self.image_size, self.mean, self.std, self.resample = _preprocessing(path, self.settings["preprocessing"])
        # With a DINOv2 memory the graph has a second input: the same images, its preprocessing.
        memory = self.settings.get("memory_preprocessing")
        self.memory_preprocessing = None if memory is None else _preprocessing(path, memory)
        # the decision threshold: `threshold`, else a sensitivity (this one, else the sidecar's) over the stored one
        stored = check_threshold(self.settings.get("decision_threshold"), f"{sidecar_path(path)}: decision_threshold")
        if threshold is None and sensitivity is None and stored is not None:
            sensitivity = check_sensitivity(self.settings.get("sensitivity"), f"{sidecar_path(path)}: sensitivity")
        self.sensitivity = None if threshold is not None else check_sensitivity(sensitivity)
        self.threshold = resolve_threshold(stored, check_threshold(threshold), self.sensitivity)
        self.pixel_threshold = self.settings.get("pixel_threshold")
        self.category = self.settings.get("category", {}).get("category")
        # A base of random weights: every output says PIPELINE CHECK, as the PyTorch path's do.
        self.note = PIPELINE_CHECK_NOTE if (self.settings.get("base_model") or {}).get("random_weights") else ""
        self.session = self._open_session(path, providers=providers, session_options=session_options)
        check_graph(path, graph, self.settings, self._metadata())
        # A tiled category: the graph scores tiles; images are cut and stitched here, as `model.tiling` does.
        self.tiling = self.settings.get("tiling")

    def _metadata(self) -> dict:
        """The graph's metadata_props (the category it was exported for)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _open_session(self, path: str, providers: Optional[Sequence[str]] = None, session_options=None):
        """The runtime's loaded graph (a subclass for another runtime, e.g. OpenVINO, overrides this and
        `_infer`)."""
        onnxruntime = import_extra("onnxruntime")
        return onnxruntime.InferenceSession(path, sess_options=session_options,
                                            providers=list(providers or ["CPUExecutionProvider"]))

    def _infer(self, feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        """(image scores, anomaly maps) of checked float32 feeds, as the runtime returns them."""
        scores, maps = self.session.run(list(OUTPUT_NAMES), feeds)
        return scores, maps

    def preprocess(self, images: Sequence[ImageInput]):
        """(B, 3, S, S) float32 pixel values, as `AnomCLIPProcessor` makes them; with a DINOv2 memory a dict of
        pixel_values and memory_pixel_values (the same images, the memory tower's preprocessing)."""
        pixel_values = pixel_array(images, self.image_size, self.mean, self.std, self.resample)
        if self.memory_preprocessing is None:
            return pixel_values
        return {INPUT_NAME: pixel_values, MEMORY_INPUT_NAME: pixel_array(images, *self.memory_preprocessing)}

    def run(self, pixel_values) -> tuple[np.ndarray, np.ndarray]:
        """(image scores (B,), anomaly maps (B, H, W)) of preprocessed pixel values (for a graph with a DINOv2
        memory: the dict `preprocess` returns); ValueError when any output is NaN or infinite."""
        scores, maps = self.run_unchecked(pixel_values)
        bad = ~(np.isfinite(scores) & np.isfinite(maps.reshape(maps.shape[0], -1)).all(axis=1))
        if bad.any():  # the graph cannot check (data-dependent), so its outputs are checked here
            raise ExportError(f"{self.path}: the exported model scored images {np.flatnonzero(bad).tolist()} of the "
                             "batch NaN or infinite; no scores are returned (they would read as 'normal')")
        return scores, maps

    def run_unchecked(self, pixel_values) -> tuple[np.ndarray, np.ndarray]:
        """`run` without the check of the outputs (a caller that checks each image itself)."""
        given = dict(pixel_values) if isinstance(pixel_values, dict) else {INPUT_NAME: pixel_values}
        feeds = {INPUT_NAME: _checked_input(given.get(INPUT_NAME), INPUT_NAME, self.image_size, self.mean, self.std)}
        if self.memory_preprocessing is not None:
            size, mean, std, _ = self.memory_preprocessing
            feeds[MEMORY_INPUT_NAME] = _checked_input(given.get(MEMORY_INPUT_NAME), MEMORY_INPUT_NAME, size, mean, std)
            if feeds[MEMORY_INPUT_NAME].shape[0] != feeds[INPUT_NAME].shape[0]:
                raise ExportError(f"{MEMORY_INPUT_NAME} holds {feeds[MEMORY_INPUT_NAME].shape[0]} images but "
                                 f"{INPUT_NAME} {feeds[INPUT_NAME].shape[0]}")
        scores, maps = self._infer(feeds)
        return np.asarray(scores, dtype=np.float32), np.asarray(maps, dtype=np.float32)

    def run_tiles(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A tiled graph on preprocessed tiles: (patch scores (T, P), memory patch scores (T, P), text image
        scores (T,)), checked finite."""
        feeds = {INPUT_NAME: _checked_input(pixel_values, INPUT_NAME, self.image_size, self.mean, self.std)}
        outputs = self.session.run(list(TILE_OUTPUT_NAMES), feeds)  # (an OpenVINO subclass: not tiled yet)
        if not all(np.isfinite(output).all() for output in outputs):
            raise ExportError(f"{self.path}: the exported model scored tiles NaN or infinite; no scores are returned "
                             "(they would read as 'normal')")
        return tuple(output.astype(np.float32, copy=False) for output in outputs)

    def score_tiled_image(self, image: ImageInput) -> StitchedImage:
        """One image of a tiled category: its tiles through the graph in batches, stitched with numpy
        (`io.tiling`), exactly as the PyTorch model stitches them."""
        settings = self.tiling
        array = np.asarray(as_pil(image))
        height, width = array.shape[:2]
        grid = plan_tiles(height, width, TilingSpec(settings["tile"], settings["overlap"]), settings["tower_size"],
                          settings["patch_size"])
        crops = [array] if grid is None else list(tile_crops(array, grid))
        parts = [self.run_tiles(pixel_array(crops[start: start + TILE_BATCH], self.image_size, self.mean, self.std,
                                            self.resample))
                 for start in range(0, len(crops), TILE_BATCH)]
        patch, memory, text = (np.concatenate(values) for values in zip(*parts))
        if grid is None:
            sigma = whole_image_sigma(settings["gaussian_sigma"], settings["sigma_reference_size"], height, width)
            return whole_image(height, width, patch, memory, text, sigma, settings["scoring_size"])
        sigma = tile_sigma(settings["gaussian_sigma"], settings["sigma_reference_size"], grid)
        return stitch_image(grid, patch, memory, text, sigma)

    def _score_decoded(self, images) -> tuple[np.ndarray, object]:
        """(scores (B,), maps) of decoded images: (B, H, W) untiled; tiled, one map per image at its size
        (stacked when the sizes agree)."""
        if self.tiling is None:
            return self.run(self.preprocess(images))
        results = [self.score_tiled_image(image) for image in images]
        maps = [result.anomaly_map for result in results]
        same = len({m.shape for m in maps}) == 1
        return np.asarray([r.image_score for r in results], dtype=np.float32), np.stack(maps) if same else maps

    def predict(self, images, batch_size: int = 16) -> OnnxPrediction:
        """Scores, decisions and maps of PIL images, paths or uint8 arrays (one or a list)."""
        if batch_size < 1:
            raise ExportError(f"batch_size={batch_size}; expected >= 1")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        scores, maps = [], []
        for start in range(0, len(images), batch_size):
            batch_scores, batch_maps = self._score_decoded(images[start: start + batch_size])
            scores.append(batch_scores)
            maps.extend(batch_maps)
        image_scores = np.concatenate(scores)
        same = len({m.shape for m in maps}) == 1
        return OnnxPrediction(image_scores=image_scores, anomaly_maps=np.stack(maps) if same else maps,
                              decisions=[decision(float(score), self.threshold) for score in image_scores])

    __call__ = predict

    def score_batches(self, images: Sequence[ImageInput], batch_size: int = 16, progress: bool = True,
                      skip_unreadable: bool = False) -> Iterator[ScoredBatch]:
        """Batch by batch, as `inference.score_images` (`io.batches.scored_batches`; the Predictor's loop also
        isolates an input that fails in the graph)."""
        from ..io.batches import (
            scored_batches,  # and tqdm: only this path shows progress
        )

        return scored_batches(images, self._score_decoded, batch_size=batch_size,
                              progress=progress, skip_unreadable=skip_unreadable)


def _preprocessing(path: str, settings: dict) -> tuple:
    """(image_size, mean, std, PIL resample filter) of a sidecar's preprocessing block."""
    filters = {name: value for value, name in RESAMPLE_NAMES.items()}
    if settings["resample"] not in filters:
        raise ExportError(f"{path}: resample {settings['resample']!r} is not a PIL filter "
                         f"(expected one of {sorted(filters)})")
    return int(settings["image_size"]), tuple(settings["mean"]), tuple(settings["std"]), filters[settings["resample"]]


def _checked_input(values, name: str, size: int, mean, std) -> np.ndarray:
    """One input of the graph as float32, refused (naming it) when missing, misshapen, non-finite or far out of
    the preprocessed range: the graph cannot check, and would return finite nonsense."""
    if values is None:
        raise ExportError(f"{name} is missing: this exported model takes {INPUT_NAME} and {MEMORY_INPUT_NAME} "
                         "(preprocess() makes both)")
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 4 or values.shape[1:] != (3, size, size):
        raise ExportError(f"{name} has shape {values.shape}; expected (batch, 3, {size}, {size})")
    if not np.isfinite(values).all():
        raise ExportError(f"{name} contains {int((~np.isfinite(values)).sum())} NaN or infinite values")
    problem = pixel_range_problem(float(np.abs(values).max()) if values.size else 0.0, mean, std)
    if problem:
        raise ExportError(problem)
    return values
