"""The app's server-side state: one base model and its categories, a work folder, one model job at a time.

Fitting goes through `training.train_category` (what `anomclip fit` runs) and scoring through
`inference.predictor.Predictor` (what `anomclip predict` runs); this module only stages the uploaded files and
keeps what the page needs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import ArgumentError, BusyError  # BusyError: raised when another fit or scoring uses the model
from ..io.image_io import ImageReadError, load_image
from ..io.labels import PIPELINE_CHECK_NOTE
from .base import FIT_PRESET, BaseChoice, choose_base
from .results import ScoredImage, ScoredSet, write_thumbnails
from .uploads import MAX_FILE_MB, MAX_FILES, StagedFiles, folder_sources, stage_files

# progress(epoch, total_epochs, logs) after every training epoch
FitProgress = Callable[[int, int, dict], None]


# The one answer a visitor gets for anything naming a place on the server (adapter, base, references): it
# says nothing about what exists there.
SERVER_FILES_OFF = ("this page does not read files or folders on its server: upload the images, or enter a Hub "
                    "repo id (owner/name)")
OWN_TOKEN_NEEDED = ("paste your own Hugging Face token (with write access) to push; this page never pushes with "
                    "its operator's token")
BASE_FIXED = "the base model of this page is chosen by its operator"
MAX_SESSIONS = 64
SESSION_IDLE_SECONDS = 3600.0
LOCAL_SESSION = "local"


@dataclass
class Session:
    """One browser session's state: its category, kept as its own saved adapter folder, so what another
    session fits or loads into the shared model never changes this one's scores."""

    key: str
    folder: str
    category: Optional[str] = None
    adapter: Optional[str] = None  # the session's copy of its category (an adapter folder)
    last_used: float = field(default_factory=time.monotonic)


class SessionTable:
    """Sessions by key (Gradio's session hash), at most `max_sessions`, each dropped (with its files) after
    `idle_seconds` without use or when the table is full and it is the least recently used."""

    def __init__(self, root: str, max_sessions: int = MAX_SESSIONS, idle_seconds: float = SESSION_IDLE_SECONDS):
        self.root, self.max_sessions, self.idle_seconds = root, max_sessions, idle_seconds
        self._sessions: OrderedDict = OrderedDict()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.start_with: tuple = (None, None)  # (category, adapter folder) each new session starts with

    def get(self, key: str) -> Session:
        with self._lock:
            now = time.monotonic()
            for stale in [k for k, s in self._sessions.items() if now - s.last_used > self.idle_seconds]:
                self._drop(stale)
            session = self._sessions.get(key)
            if session is None:
                while len(self._sessions) >= self.max_sessions:
                    self._drop(next(iter(self._sessions)))
                folder = os.path.join(self.root, f"session-{next(self._numbers):04d}")
                os.makedirs(folder, exist_ok=True)
                category, adapter = self.start_with
                session = self._sessions[key] = Session(key, folder, category=category, adapter=adapter)
            session.last_used = now
            self._sessions.move_to_end(key)
            return session

    def forget_categories(self) -> None:
        with self._lock:
            self.start_with = (None, None)
            for session in self._sessions.values():
                session.category = session.adapter = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    def _drop(self, key: str) -> None:
        session = self._sessions.pop(key)
        shutil.rmtree(session.folder, ignore_errors=True)


@dataclass
class FitOutcome:
    category: str
    shots: int
    epochs: int
    threshold: Optional[float]
    final_losses: dict
    rejected: list[tuple[str, str]] = field(default_factory=list)


class Workspace:
    """The app's shared state: the base model, the work folder, one model job at a time, and one Session per
    browser session (`session(key)`; methods without one use the page-on-this-machine session "local").

    allow_server_folders=False is the page open to visitors (a Space, --host beyond loopback): nothing a
    visitor enters is read from the server's disk, Hub reads use the visitor's token or none (never the
    operator's HF_TOKEN), a push needs the visitor's own token, and the base is the operator's."""

    def __init__(self, base: Optional[BaseChoice] = None, work_dir: Optional[str] = None, *,
                 max_files: int = MAX_FILES, max_file_mb: float = MAX_FILE_MB, allow_server_folders: bool = True,
                 max_sessions: int = MAX_SESSIONS, session_idle_seconds: float = SESSION_IDLE_SECONDS):
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="anomclip-app-")
        self.base = base or BaseChoice(name="", message="No base loaded.")
        self.max_files, self.max_file_mb = max_files, max_file_mb
        # Reading a folder on the server is for a page on this machine; off when others can reach the app.
        self.allow_server_folders = allow_server_folders
        self.sessions = SessionTable(os.path.join(self.work_dir, "sessions"), max_sessions, session_idle_seconds)
        self._lock = threading.Lock()  # one fit / scoring / load at a time: they all change the model's state
        self._running = ""
        self._numbers = itertools.count(1)

    @property
    def visitors(self) -> bool:
        """The page is open to others than this machine's user."""
        return not self.allow_server_folders

    def session(self, key: Optional[str] = None) -> Session:
        return self.sessions.get(key or LOCAL_SESSION)

    @property
    def category(self) -> Optional[str]:
        """The local session's category (the page on this machine, and plain-Python use)."""
        return self.session().category

    # ------------------------------------------------------------------ state
    @property
    def model(self):
        if self.base.model is None:
            raise ArgumentError(self.base.message or "load a base model first")
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

    @staticmethod
    def require_category(session: Session) -> str:
        if session.category is None or session.adapter is None:
            raise ArgumentError("fit a category or load an adapter first")
        return session.category

    def _activate(self, session: Session) -> str:
        """The session's own category back in the shared model (another session may have replaced it); call
        while holding the model."""
        category = self.require_category(session)
        self.model.load_category(session.adapter, activate=False)
        return category

    def _keep(self, session: Session, category: str) -> None:
        """Save the model's `category` as the session's own copy (call while holding the model)."""
        folder = os.path.join(session.folder, f"adapter-{next(self._numbers):04d}")
        session.adapter = self.model.save_category(folder, category)
        session.category = category

    # ------------------------------------------------------------------ base and adapters
    def set_base(self, base: Optional[str]) -> str:
        from ..model.embedded_base import EMBEDDED_BACKBONE

        if self.visitors and not (self.base.model is None and (base or "").strip() == EMBEDDED_BACKBONE):
            raise ArgumentError(BASE_FIXED)  # the base is every session's: one visitor may not swap it for all
        with self.exclusive("loading a base"):
            choice = choose_base(base)
            if choice.model is not None or self.base.model is None:
                self.base = choice
                self.sessions.forget_categories()  # adapters of the old base do not fit the new one
            return self.label(choice.message) if choice.model is not None else choice.message

    def load_adapter(self, source: str, session: Optional[Session] = None, token: str = "") -> str:
        """Load an adapter folder or Hub repo id as the session's category. For visitors only a Hub repo id,
        read with their token (or none)."""
        source = (source or "").strip()
        session = session or self.session()
        if not source:
            raise ArgumentError("enter an adapter folder or Hub repo id")
        folder = self._visitor_download(source, token, session) if self.visitors else None
        with self.exclusive(f"loading {source}"):
            try:
                state = self.model.load_category(folder or source, activate=False,
                                                 **({} if folder else self._hub_token(token)))
            except ValueError as error:  # name the repo, not where the page keeps its copy
                raise ArgumentError(str(error).replace(folder, source) if folder else str(error)) from None
            self._keep(session, state.name)
        threshold = state.metadata.get("decision_threshold")
        stored = "no stored threshold" if threshold is None else f"stored threshold {threshold:.4f}"
        return self.label(f"Loaded category {state.name!r} from {source} ({stored}).")

    def stored_threshold(self, session: Optional[Session] = None) -> Optional[float]:
        """The decision threshold stored with the session's category (None without one)."""
        from ..model.category_io import CATEGORY_FILE

        session = session or self.session()
        if session.adapter is None:
            return None
        with open(os.path.join(session.adapter, CATEGORY_FILE), encoding="utf-8") as handle:
            return json.load(handle).get("decision_threshold")

    def load_operator_adapter(self, source: str) -> str:
        """The operator's adapter (a folder or Hub id, `--category` at launch, read with the operator's rights):
        every session starts with it."""
        with self.exclusive(f"loading {source}"):
            state = self.model.load_category(source, activate=False)
            folder = self.model.save_category(os.path.join(self.work_dir, "operator-adapter", state.name), state.name)
        self.sessions.start_with = (state.name, folder)
        session = self.session()
        session.category, session.adapter = state.name, folder
        return f"Loaded category {state.name!r} for every session."

    def _visitor_download(self, source: str, token: str, session: Session) -> str:
        """A copy, in the session's folder, of the Hub snapshot of a visitor's repo id, fetched with the visitor's
        token or none; anything that is not an 'owner/name' repo id gets SERVER_FILES_OFF without a look at the
        disk."""
        from ..hub.download import download_category
        from ..hub.validation import looks_like_local_path, validate_repo_id
        from ..model.category_io import LAYOUT_FILES

        try:
            validate_repo_id(source)
        except ValueError:
            raise ArgumentError(SERVER_FILES_OFF) from None
        if looks_like_local_path(source) or "/" not in source:
            raise ArgumentError(SERVER_FILES_OFF)
        snapshot = download_category(source, filenames=LAYOUT_FILES, token=(token or "").strip() or False)
        copy = os.path.join(session.folder, f"download-{next(self._numbers):04d}")
        shutil.copytree(snapshot.folder, copy)  # the files, not the cache's links to its blobs
        return copy

    def _hub_token(self, token: str) -> dict:
        """Hub keyword for a read: the token typed on the page; none typed: the default (HF_TOKEN) only for
        the page on this machine, no token at all for visitors."""
        token = (token or "").strip()
        if token:
            return {"token": token}
        return {"token": False} if self.visitors else {}

    # ------------------------------------------------------------------ fit
    def fit(self, sources: Sequence[str], category: str, *, server_folder: str = "", class_name: str = "",
            epochs: int = 10, progress: Optional[FitProgress] = None, session: Optional[Session] = None) -> FitOutcome:
        """Train category `category` on the uploaded (and/or server-folder) normal images; bad files are
        rejected with the reason, the rest are the references."""
        from ..hub.validation import validate_category_name
        from ..training import TrainingConfig, train_category

        validate_category_name(category)
        epochs = int(epochs)
        if epochs < 1:
            raise ArgumentError(f"epochs={epochs}; expected 1 or more")
        if (server_folder or "").strip() and not self.allow_server_folders:
            raise ArgumentError(SERVER_FILES_OFF)
        session = session or self.session()
        sources = list(sources or []) + (folder_sources(server_folder) if (server_folder or "").strip() else [])
        model = self.model
        with self.exclusive(f"fitting {category!r}"):
            job = self.new_folder(f"fit-{category}")
            staged = decodable(stage_files(sources, os.path.join(job, "references", category),
                                           max_files=self.max_files, max_file_mb=self.max_file_mb))
            if not staged.images:
                raise ArgumentError("no usable reference image" + rejected_suffix(staged.rejected))
            config = TrainingConfig.from_preset(FIT_PRESET).with_epochs(epochs).with_overrides(
                {"progress_bar": False, "trackers": "none", "checkpoint_every": 0})
            callbacks = [] if progress is None else [lambda epoch, logs: progress(epoch, config.total_epochs, logs)]
            summary = train_category(model, category, os.path.join(job, "training"), dataset="folder",
                                     data_root=os.path.join(job, "references"), shots="all", config=config,
                                     class_name=class_name.strip() or None, callbacks=callbacks,
                                     adapter_dir=os.path.join(job, "adapter"))
            self._keep(session, category)
        return FitOutcome(category=category, shots=summary["shots"], epochs=summary["epochs"],
                          threshold=summary["decision_threshold"], final_losses=summary["final_losses"],
                          rejected=staged.rejected)

    # ------------------------------------------------------------------ scoring
    def score(self, sources: Sequence[str], session: Optional[Session] = None) -> ScoredSet:
        """Score the uploaded test images with the session's category (through `Predictor.write`)."""
        from ..inference.writers import overlay_name
        from ..inference.predictor import Predictor

        session = session or self.session()
        self.require_category(session)
        if not sources:
            raise ArgumentError("upload test images first")
        with self.exclusive("scoring"):
            category = self._activate(session)
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
    def export_adapter(self, session: Optional[Session] = None) -> str:
        """The session's category as an adapter folder (as `anomclip fit` writes it)."""
        session = session or self.session()
        category = self.require_category(session)
        target = os.path.join(self.new_folder("adapter"), category)
        shutil.copytree(session.adapter, target)
        return target

    def adapter_zip(self, session: Optional[Session] = None) -> str:
        session = session or self.session()
        folder = self.export_adapter(session)
        return shutil.make_archive(os.path.join(os.path.dirname(folder), f"{session.category}-adapter"), "zip",
                                   root_dir=folder)

    def push(self, repo_id: str, token: str = "", private: bool = False, session: Optional[Session] = None) -> str:
        from ..model.publishing import upload_category_folder

        session = session or self.session()
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise ArgumentError("enter a Hub repo id, e.g. user/anomclip-bracket")
        token = (token or "").strip()
        if self.visitors and not token:
            raise ArgumentError(OWN_TOKEN_NEEDED)
        commit = upload_category_folder(self.export_adapter(session), repo_id, token=token or None,
                                        private=private or None)
        return self.label(f"Pushed category {session.category!r} to {repo_id} (commit {commit.oid}).")


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
