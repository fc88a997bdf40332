"""Scoring a set of image files with a category: scores.csv, one overlay PNG per image, a report of bad files.

`anomclip predict` and `anomclip demo` write their outputs through `predict_files`:

    scores.csv     path, image_score, decision (anomalous / normal, empty without a threshold), extra columns
    overlays/      one side-by-side panel PNG per image, mirroring the input folder's sub-folders
    errors.csv     path, error: files that could not be scored (only when there are any)

A run owns these three outputs: the scores.csv, errors.csv and overlays/ of an earlier run in the same folder
are removed when a run starts (other files there are left alone), and a lock file (.anomclip.lock) refuses a
second run on the same folder while the first is alive. The CSVs are written atomically at the end. Paths in
the CSVs are text; undecodable bytes of a file name appear as \\xNN (such a file is reported, not scored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from .atomic_io import write_csv
from .data.files import IMAGE_EXTENSIONS, walk_images
from .image_io import display_path, load_mask
from .inference import score_images
from .run_lock import FolderInUseError, folder_lock
from .thresholds import decision
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


def predict_files(model, paths: Sequence[str], output_dir: str, *, root: Optional[str] = None,
                  category: Optional[str] = None, threshold: Optional[float] = None,
                  pixel_threshold: Optional[float] = None, ground_truth: Optional[Mapping[str, str]] = None,
                  extra_columns: Optional[Mapping[str, Mapping[str, object]]] = None, batch_size: int = 16,
                  output_size: Optional[int] = None, keep_maps: bool = False, note: str = "",
                  not_images: Sequence[str] = (), unlistable: Sequence[tuple[str, str]] = (), autocast_dtype=None,
                  progress: bool = True) -> PredictionResult:
    """Score `paths` with the category and write scores.csv, overlays/ and errors.csv into `output_dir`.

    threshold / pixel_threshold: default to the category's stored ones (category.json).
    ground_truth: path -> mask file, drawn as a yellow contour; extra_columns: path -> {column: value}.
    autocast_dtype: torch.bfloat16 / torch.float16 for the vision tower on a GPU (see `score_images`).
    Unreadable files, files with undecodable names, the `not_images` found beside the images and the
    `unlistable` (folder, why) pairs are reported (errors.csv and the result), never fatal. An OSError
    writing the outputs names the path in its message.
    """
    state = model.get_category(category)
    threshold = state.metadata.get("decision_threshold") if threshold is None else threshold
    pixel_threshold = state.metadata.get("pixel_threshold") if pixel_threshold is None else pixel_threshold
    ground_truth, extra_columns = ground_truth or {}, extra_columns or {}
    result = PredictionResult(output_dir=output_dir, threshold=threshold)
    columns = sorted({key for row in extra_columns.values() for key in row})
    paths = list(paths)
    named = [path for path in paths if _printable(path)]
    result.failures += [(path, "file name is not valid UTF-8 (its bytes are shown as \\xNN); rename it to score it")
                        for path in paths if not _printable(path)]
    rows = [["path", "image_score", "decision", *columns]]
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise OSError(f"cannot write output folder {display_path(output_dir)}: it is a file, not a folder")
    with _writing(output_dir, "output folder"):
        os.makedirs(output_dir, exist_ok=True)
    with contextlib.ExitStack() as held:
        with _writing(output_dir, "output folder"):  # a read-only folder fails here, naming it
            held.enter_context(folder_lock(output_dir, "predict run"))
        _remove_earlier_outputs(output_dir)
        for batch in score_images(model, named, batch_size=batch_size, output_size=output_size,
                                  category=state.name, progress=progress, skip_unreadable=True,
                                  autocast_dtype=autocast_dtype):
            result.failures += [(named[index], error) for index, error in batch.failures]
            for offset, index in enumerate(batch.indices):
                path, score = named[index], float(batch.image_scores[offset])
                result.scores[path] = score
                if keep_maps:
                    result.maps[path] = batch.anomaly_maps[offset]
                rows.append([path, f"{score:.6f}", decision(score, threshold),
                             *(extra_columns.get(path, {}).get(c, "") for c in columns)])
                mask = load_mask(ground_truth[path]) if ground_truth.get(path) else None
                panel = anomaly_panel(batch.images[offset], batch.anomaly_maps[offset], score=score,
                                      threshold=threshold, pixel_threshold=pixel_threshold, ground_truth=mask,
                                      note=note)
                target = os.path.join(output_dir, OVERLAY_DIR, overlay_name(path, root))
                with _writing(target, "overlay"):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    panel.save(target)
        result.failures += list(unlistable)
        result.failures += [(path, "not an image file (unknown extension); skipped") for path in not_images]
        with _writing(os.path.join(output_dir, SCORES_FILE), "scores file"):
            write_csv(os.path.join(output_dir, SCORES_FILE), rows)
        if result.failures:
            with _writing(os.path.join(output_dir, ERRORS_FILE), "errors file"):
                write_csv(os.path.join(output_dir, ERRORS_FILE),
                          [["path", "error"], *((display_path(path), why) for path, why in result.failures)])
    return result


def _printable(path: str) -> bool:
    """False for a file name with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _remove_earlier_outputs(output_dir: str) -> None:
    """Delete the scores.csv, errors.csv and overlays/ an earlier run left, so every output is this run's."""
    with _writing(output_dir, "output folder"):
        for name in (SCORES_FILE, ERRORS_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))
        overlays = os.path.join(output_dir, OVERLAY_DIR)
        if os.path.isdir(overlays) and not os.path.islink(overlays):
            shutil.rmtree(overlays)
        elif os.path.lexists(overlays):
            os.remove(overlays)


@contextlib.contextmanager
def _writing(path: str, what: str):
    """Turn an OSError while writing an output (disk full, read-only, a file where a folder belongs) into one
    OSError whose message names the path and the reason."""
    try:
        yield
    except OSError as error:
        if getattr(error, "anomclip_output", False) or isinstance(error, FolderInUseError):
            raise
        reason = error.strerror or str(error)
        where = error.filename if error.filename is not None else path
        problem = OSError(f"cannot write {what} {display_path(where)}: {reason}")
        problem.anomclip_output = True
        raise problem from error


def find_inputs(images_dir: str, exclude: Optional[str] = None
                ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(image files, other files, (unlistable folder, why)) under `images_dir` (recursive), never entering
    `exclude` (the output folder); ValueError when there is no image at all."""
    unlistable: list[tuple[str, str]] = []
    images, others = walk_images(images_dir, unlistable=unlistable, exclude=exclude)
    if not images:
        found = (f" (only other files, e.g. {display_path(others[0])})" if others
                 else f" ({unlistable[0][1]}: {display_path(unlistable[0][0])})" if unlistable else " (it is empty)")
        raise ValueError(f"no image files ({', '.join(ext.lstrip('.') for ext in IMAGE_EXTENSIONS)}) under "
                         f"{images_dir}{found}")
    return images, others, unlistable


def predict_folder(model, images_dir: str, output_dir: str, **kwargs) -> PredictionResult:
    """`predict_files` over every image under `images_dir` (recursive); the other files are reported."""
    images, others, unlistable = find_inputs(images_dir, exclude=output_dir)
    return predict_files(model, images, output_dir, root=images_dir, not_images=others, unlistable=unlistable,
                         **kwargs)
