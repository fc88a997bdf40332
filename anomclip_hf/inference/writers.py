"""What a prediction run writes into its output folder, and only that:

    scores.csv     path, image_score, normalized_score (the threshold at 0.5), decision (anomalous / normal,
                   both empty without a threshold), extra columns (a "note" for a random base)
    overlays/      a side-by-side panel PNG per image (`overlays="all"`), per anomalous image ("anomalous") or
                   none ("none"), mirroring the input folder's sub-folders; long side at most 1536 px
    maps/, masks/  with save_maps: the raw anomaly map (.npy, float32) and the predicted-defect mask
                   (PNG, 255 = map > pixel threshold) of each image, named as its overlay
    errors.csv     path, error: inputs that could not be scored (only when there are any)
    .anomclip-run.json   the manifest: every file this run wrote (relative paths)

A run deletes only what an earlier run recorded in its manifest (a user's own files in overlays/, maps/,
masks/ are never touched; a manifest left by a killed run lists what that run planned to write). A lock file
(.anomclip.lock) refuses a second run on the same folder while the first is alive. The CSVs are written
atomically at the end. Overlays and maps are drawn and saved by background threads (a bounded number in
flight), off the scoring loop. Paths in the CSVs are text; undecodable bytes of a file name appear as \\xNN.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ..io.atomic_io import write_csv, write_json
from ..io.image_io import display_path, load_mask
from ..io.run_lock import FolderInUseError, folder_lock
from ..model.decisions import decision, normalized_score
from .visualization import anomaly_panel
from ..errors import ArgumentError

SCORES_FILE, ERRORS_FILE, OVERLAY_DIR = "scores.csv", "errors.csv", "overlays"
MAPS_DIR, MASKS_DIR = "maps", "masks"
MANIFEST_FILE = ".anomclip-run.json"
MANIFEST_FORMAT = "anomclip-run"
NOT_AN_IMAGE = "not an image file (unknown extension); skipped"
NOT_UTF8 = "file name is not valid UTF-8 (its bytes are shown as \\xNN); rename it to score it"
OVERLAY_CHOICES = ("all", "anomalous", "none")
SCORE_COLUMNS = ["path", "image_score", "normalized_score", "decision"]
PNG_COMPRESSION = 1


@dataclass
class PredictionResult:
    output_dir: str
    threshold: Optional[float]
    scores: dict[str, float] = field(default_factory=dict)  # path -> image score, in input order
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # path -> anomaly map, when kept
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files not scored
    overlays: dict[str, str] = field(default_factory=dict)  # path -> its overlay PNG, where one was drawn

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


def check_overlays(choice: str) -> str:
    if choice not in OVERLAY_CHOICES:
        raise ArgumentError(f"overlays={choice!r}; expected one of {', '.join(OVERLAY_CHOICES)}")
    return choice


# ---------------------------------------------------------------------------------------------- files
def write_image_outputs(output_dir: str, name: str, image, anomaly_map, score: float, *,
                        threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                        ground_truth: Optional[str] = None, note: str = "", save_maps: bool = False,
                        overlay: bool = True) -> list[str]:
    """One image's overlay PNG (overlays/NAME, when `overlay`) and, with save_maps, its raw map and mask; the
    written files' paths (the overlay first). `ground_truth`: a mask file drawn as a yellow contour."""
    written = []
    if overlay:
        mask = load_mask(ground_truth) if ground_truth else None
        panel = anomaly_panel(image, anomaly_map, score=score, threshold=threshold, pixel_threshold=pixel_threshold,
                              ground_truth=mask, note=note)
        target = os.path.join(output_dir, OVERLAY_DIR, name)
        with _writing(target, "overlay"):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # zlib level 1: about 2.8x faster than PNG's default 6 on camera-like overlays, files ~18 % larger
            _save_whole(target, lambda handle: panel.save(handle, format="PNG", compress_level=PNG_COMPRESSION,
                                                          pnginfo=_png_text(note=note, score=f"{score:.6f}")))
        written.append(target)
    if save_maps:
        written += _save_map_and_mask(output_dir, name, anomaly_map, pixel_threshold)
    return written


def _save_whole(target: str, save) -> None:
    """Write through a temporary file and a rename: a failed write leaves no 0-byte or half file behind."""
    temporary = f"{target}.partial-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(temporary, "wb") as handle:
            save(handle)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _save_map_and_mask(output_dir: str, name: str, anomaly_map, pixel_threshold: Optional[float]) -> list[str]:
    """maps/NAME.npy: the raw float32 map; masks/NAME.png: 255 where it exceeds the pixel threshold."""
    from PIL import Image

    values = np.asarray(anomaly_map, dtype=np.float32)
    stem = os.path.splitext(name)[0]
    map_path = os.path.join(output_dir, MAPS_DIR, stem + ".npy")
    written = [map_path]
    with _writing(map_path, "anomaly map"):
        os.makedirs(os.path.dirname(map_path), exist_ok=True)
        _save_whole(map_path, lambda handle: np.save(handle, values))
        if pixel_threshold is not None:
            mask_path = os.path.join(output_dir, MASKS_DIR, stem + ".png")
            os.makedirs(os.path.dirname(mask_path), exist_ok=True)
            mask = Image.fromarray(((values > pixel_threshold) * 255).astype(np.uint8))
            _save_whole(mask_path, lambda handle: mask.save(handle, format="PNG", compress_level=PNG_COMPRESSION))
            written.append(mask_path)
    return written


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


# ---------------------------------------------------------------------------------------------- manifest
class RunManifest:
    """`.anomclip-run.json` of an output folder: the files (relative paths) a run wrote, so the next run
    removes those and nothing else. `complete` is false while the run goes on: then `files` lists what it
    planned to write (a killed run's outputs are still found)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, MANIFEST_FILE)

    def recorded(self) -> list[str]:
        """The relative paths the earlier run recorded ([] without a readable manifest)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                payload = json.load(handle)
        except (OSError, ValueError):
            return []
        files = payload.get("files") if isinstance(payload, dict) and payload.get("format") == MANIFEST_FORMAT else None
        return [name for name in files if isinstance(name, str)] if isinstance(files, list) else []

    def remove_recorded(self) -> None:
        """Delete the files the earlier run recorded (only inside the folder, never through a linked folder),
        then the folders that this emptied."""
        root = os.path.realpath(self.output_dir)
        folders = set()
        for name in self.recorded():
            target = self._inside(root, name)
            if target is None or not (os.path.isfile(target) or os.path.islink(target)):
                continue
            with _writing(target, "earlier output"):
                os.remove(target)
            folders.add(os.path.dirname(target))
        for folder in sorted(folders, key=len, reverse=True):  # deepest first; stop at a folder not empty
            while folder != root and folder.startswith(root + os.sep):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                folder = os.path.dirname(folder)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    @staticmethod
    def _inside(root: str, name: str) -> Optional[str]:
        """The file `name` under `root`, or None when it points anywhere else (absolute, "..", a link)."""
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/") or not name.strip():
            return None
        target = os.path.normpath(os.path.join(root, name))
        if os.path.realpath(os.path.dirname(target)) != os.path.dirname(target):
            return None  # a folder on the way is a link: it may lead outside
        return target

    def record(self, files: Iterable[str], complete: bool) -> None:
        """Write the manifest: `files` are paths relative to the output folder."""
        relative = sorted(set(files))
        with _writing(self.path, "run manifest"):
            write_json(self.path, {"format": MANIFEST_FORMAT, "version": 1, "complete": complete, "files": relative})


# ---------------------------------------------------------------------------------------------- writer
class PredictionWriter:
    """Writes one run into `output_dir` (see the module docstring): use as a context manager, `add` each scored
    image and `fail` each input that could not be scored, in input order; the CSVs and the manifest are
    written when the block ends without an error.

    root: the folder the overlays mirror; overlays: "all", "anomalous" or "none"; save_maps: also maps/ and
    masks/; ground_truth: path -> mask file (a yellow contour); extra_columns: path -> {column: value};
    keep_maps: keep every map in the result; workers: threads drawing and saving the pictures.
    """

    def __init__(self, output_dir: str, paths: Sequence[str] = (), *, root: Optional[str] = None,
                 threshold: Optional[float] = None, pixel_threshold: Optional[float] = None, note: str = "",
                 overlays: str = "all", save_maps: bool = False, ground_truth: Optional[Mapping[str, str]] = None,
                 extra_columns: Optional[Mapping[str, Mapping[str, object]]] = None, keep_maps: bool = False,
                 workers: int = 2):
        self.output_dir, self.root, self.note = output_dir, root, note
        self.threshold, self.pixel_threshold = threshold, pixel_threshold
        self.overlays, self.save_maps, self.keep_maps = check_overlays(overlays), save_maps, keep_maps
        self.ground_truth, self.extra_columns = ground_truth or {}, extra_columns or {}
        self.columns = sorted({key for row in self.extra_columns.values() for key in row}
                              | ({"note"} if note else set()))
        self.paths = list(paths)
        self.result = PredictionResult(output_dir=output_dir, threshold=threshold)
        self._rows: list[list] = []
        self._written: list[str] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="anomclip-writer")
        self._in_flight = threading.BoundedSemaphore(2 * max(1, workers) + 2)  # decoded images held at once
        self._futures: list[Future] = []
        self._held = contextlib.ExitStack()

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "PredictionWriter":
        output_dir = self.output_dir
        if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
            raise OSError(f"cannot write output folder {display_path(output_dir)}: it is a file, not a folder")
        with _writing(output_dir, "output folder"):
            os.makedirs(output_dir, exist_ok=True)
        try:
            with _writing(output_dir, "output folder"):  # a read-only folder fails here, naming it
                self._held.enter_context(folder_lock(output_dir, "predict run"))
            manifest = RunManifest(output_dir)
            manifest.remove_recorded()
            manifest.record(self._planned(), complete=False)
        except BaseException:
            self._held.close()
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._drain(raise_errors=kind is None)
            if kind is None:
                self._finish()
        finally:
            self._pool.shutdown(wait=True)
            self._held.close()

    def _planned(self) -> list[str]:
        """What this run may write (recorded first, so a killed run's files are found by the next one)."""
        planned = [SCORES_FILE, ERRORS_FILE]
        for path in self.paths:
            name = overlay_name(path, self.root)
            if self.overlays != "none":
                planned.append(os.path.join(OVERLAY_DIR, name))
            if self.save_maps:
                stem = os.path.splitext(name)[0]
                planned += [os.path.join(MAPS_DIR, stem + ".npy"), os.path.join(MASKS_DIR, stem + ".png")]
        return planned

    # ------------------------------------------------------------------ rows
    def add(self, path: str, image, anomaly_map: np.ndarray, score: float) -> None:
        """One scored image: its row now, its pictures in the background."""
        score = float(score)
        self.result.scores[path] = score
        if self.keep_maps:
            self.result.maps[path] = anomaly_map
        normalized = normalized_score(score, self.threshold)
        verdict = decision(score, self.threshold)
        self._rows.append([path, f"{score:.6f}", "" if normalized is None else f"{normalized:.6f}", verdict,
                           *(self.extra_columns.get(path, {}).get(c, self.note if c == "note" else "")
                             for c in self.columns)])
        overlay = self.overlays == "all" or (self.overlays == "anomalous" and verdict == "anomalous")
        if overlay or self.save_maps:
            name = overlay_name(path, self.root)
            if overlay:
                self.result.overlays[path] = os.path.join(self.output_dir, OVERLAY_DIR, name)
            self._submit(write_image_outputs, self.output_dir, name, image, anomaly_map, score,
                         threshold=self.threshold, pixel_threshold=self.pixel_threshold,
                         ground_truth=self.ground_truth.get(path), note=self.note, save_maps=self.save_maps,
                         overlay=overlay)

    def fail(self, path: str, why: str) -> None:
        self.result.failures.append((path, why))

    def _submit(self, function, *args, **kwargs) -> None:
        self._in_flight.acquire()  # a bounded queue: scoring waits when the pictures fall behind
        try:
            future = self._pool.submit(function, *args, **kwargs)
        except BaseException:
            self._in_flight.release()
            raise
        future.add_done_callback(lambda done: self._in_flight.release())
        self._futures.append(future)
        if len(self._futures) > 64:
            self._drain(raise_errors=True, only_done=True)

    def _drain(self, raise_errors: bool, only_done: bool = False) -> None:
        """Collect finished picture jobs (all of them unless only_done): their files, or their first error."""
        keep, first_error = [], None
        for future in self._futures:
            if only_done and not future.done():
                keep.append(future)
                continue
            try:
                self._written += future.result()
            except BaseException as error:  # noqa: BLE001 - re-raised below, after every job finished
                first_error = first_error or error
        self._futures = keep
        if first_error is not None and raise_errors:
            raise first_error

    def _finish(self) -> None:
        result, output_dir = self.result, self.output_dir
        table = [[*SCORE_COLUMNS, *self.columns], *self._rows]
        with _writing(os.path.join(output_dir, SCORES_FILE), "scores file"):
            write_csv(os.path.join(output_dir, SCORES_FILE), table)
        written = [SCORES_FILE, *(os.path.relpath(path, output_dir) for path in self._written)]
        if result.failures:
            with _writing(os.path.join(output_dir, ERRORS_FILE), "errors file"):
                write_csv(os.path.join(output_dir, ERRORS_FILE),
                          [["path", "error"], *((display_path(path), why) for path, why in result.failures)])
            written.append(ERRORS_FILE)
        RunManifest(output_dir).record(written, complete=True)


def record_outputs(output_dir: str, files: Iterable[str]) -> None:
    """The manifest of a run whose files were written by other processes (accelerate shards, Ray actors);
    `files` relative to `output_dir`."""
    RunManifest(output_dir).record(files, complete=True)


def remove_earlier_outputs(output_dir: str) -> None:
    """Delete what the earlier run in `output_dir` recorded in its manifest (nothing else)."""
    RunManifest(output_dir).remove_recorded()
