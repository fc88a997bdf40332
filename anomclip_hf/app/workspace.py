"""The app's server-side state: one base model and its categories, a work folder, one model job at a time.

Fitting goes through `training.train_category` (what `anomclip fit` runs) and scoring through
`inference.predictor.Predictor` (what `anomclip predict` runs); this module only stages the uploaded files and
keeps what the page needs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import BusyError  # noqa: F401 (raised here when another fit or scoring uses the model)
from ..io.image_io import ImageReadError, load_image
from ..io.labels import PIPELINE_CHECK_NOTE
from .base import FIT_PRESET, BaseChoice, choose_base
from .results import ScoredImage, ScoredSet, write_thumbnails
from .uploads import MAX_FILE_MB, MAX_FILES, StagedFiles, folder_sources, stage_files

# progress(epoch, total_epochs, logs) after every training epoch
FitProgress = Callable[[int, int, dict], None]


@dataclass
class FitOutcome:
    category: str
    shots: int
    epochs: int
    threshold: Optional[float]
    final_losses: dict
    rejected: list[tuple[str, str]] = field(default_factory=list)


class Workspace:
    """What every page of the app shares. Files go to `work_dir` (default: a new temporary folder)."""

    def __init__(self, base: Optional[BaseChoice] = None, work_dir: Optional[str] = None, *,
                 max_files: int = MAX_FILES, max_file_mb: float = MAX_FILE_MB, allow_server_folders: bool = True):
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="anomclip-app-")
        self.base = base or BaseChoice(name="", message="No base loaded.")
        self.category: Optional[str] = None
        self.max_files, self.max_file_mb = max_files, max_file_mb
        # Reading a folder on the server is for a page on this machine; off when others can reach the app.
        self.allow_server_folders = allow_server_folders
        self._lock = threading.Lock()  # one fit / scoring / load at a time: they all change the model's state
        self._running = ""
        self._numbers = itertools.count(1)

    # ------------------------------------------------------------------ state
    @property
    def model(self):
        if self.base.model is None:
            raise ValueError(self.base.message or "load a base model first")
        return self.base.model

    @property
    def pipeline_check(self) -> bool:
        return self.base.pipeline_check

    def label(self, text: str) -> str:
        """`text`, prefixed with the PIPELINE CHECK warning when the base is the embedded random one."""
        return f"{PIPELINE_CHECK_NOTE.replace('PIPELINE CHECK', '**PIPELINE CHECK**')}. {text}" \
            if self.pipeline_check else text

    def new_folder(self, kind: str) -> str:
        """A new numbered folder in the work folder (numbers another workspace used there are skipped)."""
        while True:
            folder = os.path.join(self.work_dir, f"{next(self._numbers):04d}-{kind}")
            try:
                os.makedirs(folder)
                return folder
            except FileExistsError:
                continue

    @contextmanager
    def exclusive(self, what: str):
        """Hold the model for `what`; BusyError at once (not a queue) when another job holds it."""
        if not self._lock.acquire(blocking=False):
            raise BusyError(f"the model is busy ({self._running}); try again when that has finished")
        self._running = what
        try:
            yield
        finally:
            self._running = ""
            self._lock.release()

    def require_category(self) -> str:
        if self.category is None:
            raise ValueError("fit a category or load an adapter first")
        return self.category

    # ------------------------------------------------------------------ base and adapters
    def set_base(self, base: Optional[str]) -> str:
        with self.exclusive("loading a base"):
            choice = choose_base(base)
            if choice.model is not None or self.base.model is None:
                self.base, self.category = choice, None
            return self.label(choice.message) if choice.model is not None else choice.message

    def load_adapter(self, source: str) -> str:
        source = (source or "").strip()
        if not source:
            raise ValueError("enter an adapter folder or Hub repo id")
        with self.exclusive(f"loading {source}"):
            state = self.model.load_category(source)
            self.category = state.name
        threshold = state.metadata.get("decision_threshold")
        stored = "no stored threshold" if threshold is None else f"stored threshold {threshold:.4f}"
        return self.label(f"Loaded category {state.name!r} from {source} ({stored}).")

    # ------------------------------------------------------------------ fit
    def fit(self, sources: Sequence[str], category: str, *, server_folder: str = "", class_name: str = "",
            epochs: int = 10, progress: Optional[FitProgress] = None) -> FitOutcome:
        """Train category `category` on the uploaded (and/or server-folder) normal images; bad files are
        rejected with the reason, the rest are the references."""
        from ..hub.validation import validate_category_name
        from ..training import TrainingConfig, train_category

        validate_category_name(category)
        epochs = int(epochs)
        if epochs < 1:
            raise ValueError(f"epochs={epochs}; expected 1 or more")
        if (server_folder or "").strip() and not self.allow_server_folders:
            raise ValueError("reading a folder on the server is off when the app listens beyond this machine; "
                             "upload the images instead")
        sources = list(sources or []) + (folder_sources(server_folder) if (server_folder or "").strip() else [])
        model = self.model
        with self.exclusive(f"fitting {category!r}"):
            job = self.new_folder(f"fit-{category}")
            staged = decodable(stage_files(sources, os.path.join(job, "references", category),
                                           max_files=self.max_files, max_file_mb=self.max_file_mb))
            if not staged.images:
                raise ValueError("no usable reference image" + rejected_suffix(staged.rejected))
            config = TrainingConfig.from_preset(FIT_PRESET).with_epochs(epochs).with_overrides(
                {"progress_bar": False, "trackers": "none", "checkpoint_every": 0})
            callbacks = [] if progress is None else [lambda epoch, logs: progress(epoch, config.total_epochs, logs)]
            summary = train_category(model, category, os.path.join(job, "training"), dataset="folder",
                                     data_root=os.path.join(job, "references"), shots="all", config=config,
                                     class_name=class_name.strip() or None, callbacks=callbacks,
                                     adapter_dir=os.path.join(job, "adapter"))
            self.category = category
        return FitOutcome(category=category, shots=summary["shots"], epochs=summary["epochs"],
                          threshold=summary["decision_threshold"], final_losses=summary["final_losses"],
                          rejected=staged.rejected)

    # ------------------------------------------------------------------ scoring
    def score(self, sources: Sequence[str]) -> ScoredSet:
        """Score the uploaded test images with the active category (through `Predictor.write`)."""
        from ..inference.writers import overlay_name
        from ..inference.predictor import Predictor

        category = self.require_category()
        if not sources:
            raise ValueError("upload test images first")
        with self.exclusive("scoring"):
            folder = self.new_folder("scores")
            inputs = os.path.join(folder, "inputs")
            staged = stage_files(sources, inputs, max_files=self.max_files, max_file_mb=self.max_file_mb)
            state = self.model.get_category(category)
            scored = ScoredSet(category=category, stored_threshold=state.metadata.get("decision_threshold"),
                               pixel_threshold=state.metadata.get("pixel_threshold"),
                               failures=list(staged.rejected), pipeline_check=self.pipeline_check)
            if staged.images:
                predictor = Predictor.from_model(self.model, category, note=scored.note)
                result = predictor.write(staged.images, folder, root=inputs, keep_maps=True, progress=False)
                scored.failures += [(os.path.basename(path), without_folder(why, path)) for path, why in result.failures]
                scored.images = [ScoredImage(name=os.path.basename(path), path=path, score=score,
                                             overlay=os.path.join(folder, "overlays", overlay_name(path, inputs)),
                                             anomaly_map=result.maps[path])
                                 for path, score in result.scores.items()]
                write_thumbnails(scored, os.path.join(folder, "thumbnails"))
        return scored

    # ------------------------------------------------------------------ export
    def export_adapter(self) -> str:
        """The active category saved as an adapter folder (as `anomclip fit` writes it)."""
        category = self.require_category()
        return self.model.save_category(os.path.join(self.new_folder("adapter"), category), category)

    def adapter_zip(self) -> str:
        folder = self.export_adapter()
        return shutil.make_archive(os.path.join(os.path.dirname(folder), f"{self.category}-adapter"), "zip",
                                   root_dir=folder)

    def push(self, repo_id: str, token: str = "", private: bool = False) -> str:
        from ..model.publishing import upload_category_folder

        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise ValueError("enter a Hub repo id, e.g. user/anomclip-bracket")
        commit = upload_category_folder(self.export_adapter(), repo_id, token=(token or "").strip() or None,
                                        private=private or None)
        return self.label(f"Pushed category {self.category!r} to {repo_id} (commit {commit.oid}).")


def decodable(staged: StagedFiles) -> StagedFiles:
    """Drop (and report) the staged images that do not decode, so one bad file does not stop a fit."""
    kept = StagedFiles(rejected=list(staged.rejected))
    for path in staged.images:
        try:
            load_image(path)
        except ImageReadError as error:
            os.remove(path)
            kept.rejected.append((os.path.basename(path), without_folder(str(error), path)))
        else:
            kept.images.append(path)
    return kept


def without_folder(message: str, path: str) -> str:
    """An error message naming the file, not the server folder it was staged in (the page needs no paths)."""
    return message.replace(path, os.path.basename(path))


def rejected_suffix(rejected: Sequence[tuple[str, str]]) -> str:
    return "" if not rejected else " (" + "; ".join(f"{name}: {why}" for name, why in rejected) + ")"
