"""Scoring a set of image files with a category: scores.csv, one overlay PNG per image, a report of bad files.

`anomclip predict` and `anomclip demo` write their outputs through `write_predictions` (the PyTorch model's
scores via `predict_files`, an exported ONNX model's via `anomclip_hf.export.runtime`):

    scores.csv     path, image_score, normalized_score (the threshold at 0.5), decision (anomalous / normal,
                   both empty without a threshold), extra columns (a "note" for a random base)
    overlays/      one side-by-side panel PNG per image, mirroring the input folder's sub-folders
    maps/, masks/  with save_maps: the raw anomaly map (.npy, float32) and the predicted-defect mask
                   (PNG, 255 = map > pixel threshold) of each image, named as its overlay
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
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..data.files import IMAGE_EXTENSIONS, is_image_file, walk_images
from ..io.atomic_io import write_csv
from ..io.batches import ScoredBatch
from ..io.image_io import display_path, load_mask
from ..io.labels import pipeline_check_note
from ..io.run_lock import FolderInUseError, folder_lock
from ..model.decisions import check_threshold, decision, normalized_score
from .visualization import anomaly_panel

SCORES_FILE, ERRORS_FILE, OVERLAY_DIR = "scores.csv", "errors.csv", "overlays"
MAPS_DIR, MASKS_DIR = "maps", "masks"
NOT_AN_IMAGE = "not an image file (unknown extension); skipped"


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
                  note: Optional[str] = None, **write_options) -> PredictionResult:
    """Score `paths` with the category and write scores.csv, overlays/ and errors.csv into `output_dir` (what
    `inference.predictor.Predictor.write` does for any engine; this is its PyTorch shortcut).

    threshold / pixel_threshold: default to the category's stored ones (category.json).
    autocast_dtype: torch.bfloat16 / torch.float16 for the vision tower on a GPU (see `score_images`).
    note: a label for every overlay and row (a "note" column); default: PIPELINE CHECK for a random base.
    write_options: root, ground_truth, extra_columns, keep_maps, not_images, unlistable, save_maps (see
    `write_predictions`).
    """
    from .batch_scoring import score_images  # torch: only this scorer needs it

    state = model.get_category(category)
    threshold = state.metadata.get("decision_threshold") if threshold is None else check_threshold(threshold)
    pixel_threshold = (state.metadata.get("pixel_threshold") if pixel_threshold is None
                       else check_threshold(pixel_threshold, "pixel_threshold"))

    def batches(named):
        return score_images(model, named, batch_size=batch_size, output_size=output_size, category=state.name,
                            progress=progress, skip_unreadable=True, autocast_dtype=autocast_dtype)

    return write_scored(batches, paths, output_dir, threshold=threshold, pixel_threshold=pixel_threshold,
                        note=pipeline_check_note(model) if note is None else note, **write_options)


def write_scored(batches: Callable[[list], Iterable[ScoredBatch]], paths: Sequence[str], output_dir: str,
                 **options) -> PredictionResult:
    """`write_predictions` of `batches(named paths)`, scored lazily inside its lock; paths whose names are not
    UTF-8 are reported, not scored."""
    paths = list(paths)
    named = [path for path in paths if printable(path)]

    def scored():
        yield from batches(named)

    return write_predictions(scored(), named, output_dir, unnamed=[path for path in paths if not printable(path)],
                             **options)


def write_predictions(batches: Iterable[ScoredBatch], paths: Sequence[str], output_dir: str, *,
                      root: Optional[str] = None, threshold: Optional[float] = None,
                      pixel_threshold: Optional[float] = None, ground_truth: Optional[Mapping[str, str]] = None,
                      extra_columns: Optional[Mapping[str, Mapping[str, object]]] = None, keep_maps: bool = False,
                      note: str = "", not_images: Sequence[str] = (), unlistable: Sequence[tuple[str, str]] = (),
                      unnamed: Sequence[str] = (), save_maps: bool = False) -> PredictionResult:
    """Write scores.csv, overlays/ and errors.csv into `output_dir` from the scored `batches` of `paths`
    (from any scorer: `inference.score_images`, or the ONNX Runtime detector's `score_batches`).

    ground_truth: path -> mask file, drawn as a yellow contour; extra_columns: path -> {column: value}.
    save_maps: also write each raw anomaly map (maps/*.npy) and, with a pixel threshold, its mask (masks/*.png).
    Unreadable files, files with undecodable names (`unnamed`), the `not_images` found beside the images and
    the `unlistable` (folder, why) pairs are reported (errors.csv and the result), never fatal. An OSError
    writing the outputs names the path in its message.
    """
    ground_truth, extra_columns = ground_truth or {}, extra_columns or {}
    result = PredictionResult(output_dir=output_dir, threshold=threshold)
    columns = sorted({key for row in extra_columns.values() for key in row} | ({"note"} if note else set()))
    result.failures += [(path, "file name is not valid UTF-8 (its bytes are shown as \\xNN); rename it to score it")
                        for path in unnamed]
    rows = [["path", "image_score", "normalized_score", "decision", *columns]]
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise OSError(f"cannot write output folder {display_path(output_dir)}: it is a file, not a folder")
    with _writing(output_dir, "output folder"):
        os.makedirs(output_dir, exist_ok=True)
    with contextlib.ExitStack() as held:
        with _writing(output_dir, "output folder"):  # a read-only folder fails here, naming it
            held.enter_context(folder_lock(output_dir, "predict run"))
        remove_earlier_outputs(output_dir)
        for batch in batches:
            result.failures += [(paths[index], error) for index, error in batch.failures]
            for offset, index in enumerate(batch.indices):
                path, score = paths[index], float(batch.image_scores[offset])
                result.scores[path] = score
                if keep_maps:
                    result.maps[path] = batch.anomaly_maps[offset]
                normalized = normalized_score(score, threshold)
                rows.append([path, f"{score:.6f}", "" if normalized is None else f"{normalized:.6f}",
                             decision(score, threshold),
                             *(extra_columns.get(path, {}).get(c, note if c == "note" else "") for c in columns)])
                write_image_outputs(output_dir, overlay_name(path, root), batch.images[offset],
                                    batch.anomaly_maps[offset], score, threshold=threshold,
                                    pixel_threshold=pixel_threshold, ground_truth=ground_truth.get(path),
                                    note=note, save_maps=save_maps)
        result.failures += list(unlistable)
        result.failures += [(path, NOT_AN_IMAGE) for path in not_images]
        with _writing(os.path.join(output_dir, SCORES_FILE), "scores file"):
            write_csv(os.path.join(output_dir, SCORES_FILE), rows)
        if result.failures:
            with _writing(os.path.join(output_dir, ERRORS_FILE), "errors file"):
                write_csv(os.path.join(output_dir, ERRORS_FILE),
                          [["path", "error"], *((display_path(path), why) for path, why in result.failures)])
    return result


def write_image_outputs(output_dir: str, name: str, image, anomaly_map, score: float, *,
                        threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                        ground_truth: Optional[str] = None, note: str = "", save_maps: bool = False) -> str:
    """One image's overlay PNG (overlays/NAME) and, with save_maps, its raw map and mask; returns the overlay's
    path. `ground_truth`: a mask file drawn as a yellow contour."""
    mask = load_mask(ground_truth) if ground_truth else None
    panel = anomaly_panel(image, anomaly_map, score=score, threshold=threshold, pixel_threshold=pixel_threshold,
                          ground_truth=mask, note=note)
    target = os.path.join(output_dir, OVERLAY_DIR, name)
    with _writing(target, "overlay"):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        panel.save(target, pnginfo=_png_text(note=note, score=f"{score:.6f}"))
        if save_maps:
            _save_map_and_mask(output_dir, name, anomaly_map, pixel_threshold)
    return target


def printable(path: str) -> bool:
    """False for a file name with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def remove_earlier_outputs(output_dir: str) -> None:
    """Delete the scores.csv, errors.csv, overlays/, maps/ and masks/ an earlier run left, so every output is
    this run's."""
    with _writing(output_dir, "output folder"):
        for name in (SCORES_FILE, ERRORS_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))
        for folder in (OVERLAY_DIR, MAPS_DIR, MASKS_DIR):
            path = os.path.join(output_dir, folder)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)


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


def _png_text(**fields: str):
    """PNG text chunks (read back with Image.open(path).text): the label is in the file, not only drawn."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in fields.items():
        if value:
            info.add_text(key, value)
    return info


def _save_map_and_mask(output_dir: str, name: str, anomaly_map, pixel_threshold: Optional[float]) -> None:
    """maps/NAME.npy: the raw float32 map; masks/NAME.png: 255 where it exceeds the pixel threshold."""
    from PIL import Image

    values = np.asarray(anomaly_map, dtype=np.float32)
    stem = os.path.splitext(name)[0]
    map_path = os.path.join(output_dir, MAPS_DIR, stem + ".npy")
    os.makedirs(os.path.dirname(map_path), exist_ok=True)
    np.save(map_path, values)
    if pixel_threshold is not None:
        mask_path = os.path.join(output_dir, MASKS_DIR, stem + ".png")
        os.makedirs(os.path.dirname(mask_path), exist_ok=True)
        Image.fromarray(((values > pixel_threshold) * 255).astype(np.uint8)).save(mask_path)


def find_inputs(inputs: Union[str, Sequence[str]], flag: str = "--images", exclude: Optional[str] = None
                ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(image files, other files, (unlistable folder, why)) of folders (recursive, never entering `exclude`, the
    output folder) and single image files; ValueError naming `flag` and the path when one does not exist, a
    named file is not an image, or there is no image at all."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    extensions = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    images, others, unlistable = [], [], []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found, other = walk_images(item, unlistable=unlistable, exclude=exclude)
            images += found
            others += other
        elif os.path.isfile(item):
            if not is_image_file(item):
                raise ValueError(f"{flag} {display_path(item)}: not an image file (expected {extensions})")
            images.append(item)
        else:
            raise ValueError(f"{flag} {display_path(item)}: no such file or folder")
    images, others = list(dict.fromkeys(images)), list(dict.fromkeys(others))  # a file named twice: once
    if not images:
        found = (f" (only other files, e.g. {display_path(others[0])})" if others
                 else f" ({unlistable[0][1]}: {display_path(unlistable[0][0])})" if unlistable else " (it is empty)")
        raise ValueError(f"{flag}: no image files ({extensions}) under "
                         f"{', '.join(display_path(os.fspath(p)) for p in inputs)}{found}")
    return images, others, unlistable


def input_root(inputs: Union[str, Sequence[str]]) -> str:
    """The folder the overlays' sub-folders mirror: the folder given, or the common folder of several inputs."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    folders = [os.path.abspath(p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))) for p in inputs]
    return os.path.commonpath(folders)


def predict_folder(model, images_dir: str, output_dir: str, **kwargs) -> PredictionResult:
    """`predict_files` over every image under `images_dir` (recursive); the other files are reported."""
    images, others, unlistable = find_inputs(images_dir, exclude=output_dir)
    return predict_files(model, images, output_dir, root=images_dir, not_images=others, unlistable=unlistable,
                         **kwargs)
