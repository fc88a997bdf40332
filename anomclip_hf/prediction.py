"""Scoring a set of image files with a category: scores.csv, one overlay PNG per image, a report of bad files.

`anomclip predict` and `anomclip demo` write their outputs through `write_predictions` (the PyTorch model's
scores via `predict_files`, an exported ONNX model's via `anomclip_hf.export.runtime`):

    scores.csv     path, image_score, decision (anomalous / normal, empty without a threshold), extra columns
    overlays/      one side-by-side panel PNG per image, mirroring the input folder's sub-folders
    errors.csv     path, error: files that could not be scored (only when there are any)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .batches import ScoredBatch
from .data.files import IMAGE_EXTENSIONS, walk_images
from .decisions import decision
from .image_io import load_mask
from .visualization import anomaly_panel

SCORES_FILE, ERRORS_FILE, OVERLAY_DIR = "scores.csv", "errors.csv", "overlays"


@dataclass
class PredictionResult:
    output_dir: str
    threshold: Optional[float]
    scores: dict[str, float] = field(default_factory=dict)  # path -> image score, in input order
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # path -> anomaly map, when kept
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files not scored

    @property
    def anomalous(self) -> Optional[int]:
        if self.threshold is None:
            return None
        return sum(decision(score, self.threshold) == "anomalous" for score in self.scores.values())

    def summary(self) -> str:
        verdict = ("no decision threshold" if self.threshold is None
                   else f"{self.anomalous} anomalous at threshold {self.threshold:.4f}")
        bad = f", {len(self.failures)} files could not be scored (see {ERRORS_FILE})" if self.failures else ""
        return f"{len(self.scores)} images scored, {verdict}{bad}; results in {self.output_dir}"


def overlay_name(path: str, root: Optional[str]) -> str:
    """The overlay's path inside overlays/: the input's path below `root`, as .png."""
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    if relative.startswith(".."):
        relative = os.path.basename(path)
    return os.path.splitext(relative)[0] + ".png"


def predict_files(model, paths: Sequence[str], output_dir: str, *, category: Optional[str] = None,
                  threshold: Optional[float] = None, pixel_threshold: Optional[float] = None, batch_size: int = 16,
                  output_size: Optional[int] = None, autocast_dtype=None, progress: bool = True,
                  **write_options) -> PredictionResult:
    """Score `paths` with the category and write scores.csv, overlays/ and errors.csv into `output_dir`.

    threshold / pixel_threshold: default to the category's stored ones (category.json).
    autocast_dtype: torch.bfloat16 / torch.float16 for the vision tower on a GPU (see `score_images`).
    write_options: root, ground_truth, extra_columns, keep_maps, note, not_images (see `write_predictions`).
    """
    from .inference import score_images  # torch: only this scorer needs it

    state = model.get_category(category)
    threshold = state.metadata.get("decision_threshold") if threshold is None else threshold
    pixel_threshold = state.metadata.get("pixel_threshold") if pixel_threshold is None else pixel_threshold
    batches = score_images(model, list(paths), batch_size=batch_size, output_size=output_size, category=state.name,
                           progress=progress, skip_unreadable=True, autocast_dtype=autocast_dtype)
    return write_predictions(batches, paths, output_dir, threshold=threshold, pixel_threshold=pixel_threshold,
                             **write_options)


def write_predictions(batches: Iterable[ScoredBatch], paths: Sequence[str], output_dir: str, *,
                      root: Optional[str] = None, threshold: Optional[float] = None,
                      pixel_threshold: Optional[float] = None, ground_truth: Optional[Mapping[str, str]] = None,
                      extra_columns: Optional[Mapping[str, Mapping[str, object]]] = None, keep_maps: bool = False,
                      note: str = "", not_images: Sequence[str] = ()) -> PredictionResult:
    """Write scores.csv, overlays/ and errors.csv into `output_dir` from the scored `batches` of `paths`
    (from any scorer: `inference.score_images`, or the ONNX Runtime detector's `score_batches`).

    ground_truth: path -> mask file, drawn as a yellow contour; extra_columns: path -> {column: value}.
    Unreadable files, and the `not_images` found beside the images, are reported (errors.csv and the
    result), never fatal.
    """
    ground_truth, extra_columns = ground_truth or {}, extra_columns or {}
    result = PredictionResult(output_dir=output_dir, threshold=threshold)
    os.makedirs(os.path.join(output_dir, OVERLAY_DIR), exist_ok=True)
    columns = sorted({key for row in extra_columns.values() for key in row})
    with open(os.path.join(output_dir, SCORES_FILE), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "image_score", "decision", *columns])
        for batch in batches:
            result.failures += [(paths[index], error) for index, error in batch.failures]
            for offset, index in enumerate(batch.indices):
                path, score = paths[index], float(batch.image_scores[offset])
                result.scores[path] = score
                if keep_maps:
                    result.maps[path] = batch.anomaly_maps[offset]
                writer.writerow([path, f"{score:.6f}", decision(score, threshold),
                                 *(extra_columns.get(path, {}).get(c, "") for c in columns)])
                mask = load_mask(ground_truth[path]) if ground_truth.get(path) else None
                panel = anomaly_panel(batch.images[offset], batch.anomaly_maps[offset], score=score,
                                      threshold=threshold, pixel_threshold=pixel_threshold, ground_truth=mask,
                                      note=note)
                target = os.path.join(output_dir, OVERLAY_DIR, overlay_name(path, root))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                panel.save(target)
    result.failures += [(path, "not an image file (unknown extension); skipped") for path in not_images]
    if result.failures:
        with open(os.path.join(output_dir, ERRORS_FILE), "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "error"])
            writer.writerows(result.failures)
    return result


def find_inputs(images_dir: str) -> tuple[list[str], list[str]]:
    """(image files, other files) under `images_dir` (recursive); ValueError when there is no image at all."""
    images, others = walk_images(images_dir)
    if not images:
        found = f" (only other files, e.g. {others[0]})" if others else " (it is empty)"
        raise ValueError(f"no image files ({', '.join(ext.lstrip('.') for ext in IMAGE_EXTENSIONS)}) under "
                         f"{images_dir}{found}")
    return images, others


def predict_folder(model, images_dir: str, output_dir: str, **kwargs) -> PredictionResult:
    """`predict_files` over every image under `images_dir` (recursive); the other files are reported."""
    images, others = find_inputs(images_dir)
    return predict_files(model, images, output_dir, root=images_dir, not_images=others, **kwargs)
