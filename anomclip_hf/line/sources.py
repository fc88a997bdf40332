"""Where the line's inputs come from: a hot folder, a video file, a camera or a stream.

Each source is a thread that puts `LineInput`s on its own bounded queue:
- a hot folder queues a file once its size and modification time stayed unchanged across two scans and for
  `settle` seconds (watched, or by its modification time) (sub-folders included, hidden files and non-image files ignored); its key is (relative path, size, mtime),
  recorded in the journal before it is queued, so a file is scored once, and a file written again later is a
  new input. The queue blocks when full: files are never dropped, the scan just waits.
- a video, camera or stream (OpenCV) is sampled at `fps` frames per second of the stream, each frame stamped
  with its time; a live source (camera, stream) never waits for the scorer: when its queue is full the oldest
  frame is dropped and counted (latest wins). A video file is read as fast as it is scored, no frame dropped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..data.files import is_image_file
from .config import SourceConfig
from .journal import Journal, QueuedInput
from .schema import input_id

logger = logging.getLogger(__name__)


@dataclass
class LineInput:
    source: str
    key: str  # unique within the source, stable across restarts for files and video frames
    input: str  # what the verdict names: a path below the hot folder, or frame:N
    source_time: float  # epoch seconds: the file's last change, or the frame's time
    ready: float  # time.monotonic() when it was complete (the latency clock starts here)
    path: Optional[str] = None  # a file's path
    frame: Optional[np.ndarray] = None  # a frame, (H, W, 3) uint8 RGB
    file_state: Optional[tuple] = None  # (size, mtime_ns) the key was made from

    @property
    def input_id(self) -> str:
        return input_id(self.source, self.key)


class Source(threading.Thread):
    """A daemon thread feeding `self.queue`; `stop()` ends it, `finished` is set when a finite source is done."""

    def __init__(self, config: SourceConfig, journal: Journal, on_event: Callable[[str, str], None],
                 wake: threading.Event):
        super().__init__(name=f"source-{config.name}", daemon=True)
        self.config, self.journal, self.on_event, self.wake = config, journal, on_event, wake
        self.queue: queue.Queue = queue.Queue(maxsize=config.queue)
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.status = "starting"
        self.dropped = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self.produce()
        except Exception as error:  # a source must never take the service down; it says why it stopped
            logger.exception("source %s stopped", self.config.name)
            self.status = f"failed: {error}"
            self.on_event("error", "source")
        finally:
            self.finished.set()
            self.wake.set()

    def produce(self) -> None:
        raise NotImplementedError

    def done(self, item: LineInput) -> None:
        """Called once the item's verdict is journaled."""

    def _put_blocking(self, item: LineInput) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                self.wake.set()
                return True
            except queue.Full:
                continue
        return False

    def _put_latest(self, item: LineInput) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                self.wake.set()
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                    self.on_event("dropped", "frame")
                except queue.Empty:
                    pass


class HotFolderSource(Source):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.root = os.path.abspath(self.config.location)
        move_to = self.config.move_to
        self.move_to = None if move_to is None else os.path.abspath(os.path.join(self.root, move_to))
        self._watching: dict[str, tuple] = {}  # path -> (size, mtime_ns, monotonic time first seen so)
        self._handled: dict[str, tuple] = {}  # path -> (size, mtime_ns) queued or known: not looked at again

    def produce(self) -> None:
        # Files recorded by an earlier run but never scored (it was killed) come first, in their order.
        for queued in self.journal.queued(self.config.name):
            item = LineInput(queued.source, queued.key, queued.input, queued.source_time, time.monotonic(),
                             path=queued.path, file_state=_state_of_key(queued.key))
            self._handled[queued.path] = item.file_state  # the scan must not take (or move) it again
            if not self._put_blocking(item):
                return
        while not self.stopping.is_set():
            self.scan()
            self.stopping.wait(self.config.poll)

    def scan(self) -> None:
        if not os.path.isdir(self.root):
            if self.status != "folder missing":
                logger.error("source %s: folder %s is gone; waiting for it to come back", self.config.name, self.root)
                self.on_event("error", "source")
            self.status = "folder missing"
            return
        self.status = "watching"
        now, present = time.monotonic(), set()
        for path in self._files():
            present.add(path)
            try:
                stat = os.stat(path)
            except OSError:
                continue  # removed between the listing and the stat
            state = (stat.st_size, stat.st_mtime_ns)
            if self._handled.get(path) == state:
                continue
            seen = self._watching.get(path)
            if seen is None or seen[:2] != state:
                self._watching[path] = (*state, now)
                continue
            # Unchanged since the last scan, and for `settle` seconds: by this service's own watch, or by the
            # file's modification time (which saves a scan's wait when the file was renamed into place).
            quiet = max(now - seen[2], time.time() - stat.st_mtime)
            if quiet < self.config.settle or stat.st_size == 0:
                continue
            del self._watching[path]
            relative = os.path.relpath(path, self.root)
            key = f"{relative}|{stat.st_size}|{stat.st_mtime_ns}"
            item = LineInput(self.config.name, key, relative, stat.st_mtime, time.monotonic(), path=path,
                             file_state=state)
            if not self.journal.enqueue(QueuedInput(item.input_id, item.source, key, relative, path,
                                                    item.source_time)):
                self.done(item)  # scored by an earlier run; a move may not have happened before it stopped
                self._handled[path] = state
                continue
            self.on_event("input", "file")
            if not self._put_blocking(item):
                return
            self._handled[path] = state
        for gone in set(self._watching) - present:
            del self._watching[gone]
        for gone in set(self._handled) - present:
            del self._handled[gone]

    def _files(self):
        for folder, subfolders, files in os.walk(self.root, onerror=lambda error: None):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                                   and os.path.join(folder, name) != self.move_to)
            for name in sorted(files):
                path = os.path.join(folder, name)
                if is_image_file(name):
                    yield path

    def done(self, item: LineInput) -> None:
        if self.move_to is None or item.path is None:
            return
        target = os.path.join(self.move_to, item.input)
        try:
            if _file_state(item.path) != item.file_state:
                return  # a newer version sits there: it is an input of its own
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(item.path, target)
        except OSError as error:
            logger.warning("source %s: could not move %s to %s: %s", self.config.name, item.path, target, error)


def _file_state(path: str) -> Optional[tuple]:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


def _state_of_key(key: str) -> Optional[tuple]:
    parts = key.rsplit("|", 2)
    return (int(parts[1]), int(parts[2])) if len(parts) == 3 else None


class VideoSource(Source):
    """A video file, camera index or stream URL through OpenCV, sampled at config.fps."""

    RECONNECT_SECONDS = (0.5, 1, 2, 5)

    def produce(self) -> None:
        import cv2

        config, attempt, epoch = self.config, 0, time.time()
        is_file = config.kind == "video"
        target = int(config.location) if config.location.isdigit() else config.location
        index, next_sample = 0, 0.0
        while not self.stopping.is_set():
            capture = cv2.VideoCapture(target)
            if not capture.isOpened():
                capture.release()
                if is_file and not os.path.isfile(config.location):
                    self.status = "video file gone"
                    logger.error("source %s: %s is gone", config.name, config.location)
                    self.on_event("error", "source")
                    return
                self.status = "reconnecting"
                self.on_event("error", "source")
                self.stopping.wait(self.RECONNECT_SECONDS[min(attempt, len(self.RECONNECT_SECONDS) - 1)])
                attempt += 1
                if is_file:
                    return  # a file that OpenCV cannot open will not open later
                continue
            self.status, attempt = "streaming", 0
            try:
                while not self.stopping.is_set():
                    if not capture.grab():
                        break
                    position = (capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0) if is_file else time.time() - epoch
                    this = index
                    index += 1
                    if config.fps is not None and position + 1e-6 < next_sample:
                        continue
                    if config.fps is not None:
                        next_sample = max(next_sample + 1.0 / config.fps, position)  # no catch-up burst
                    key = f"frame:{this}" if is_file else f"t:{time.time_ns()}"
                    if is_file and self.journal.known(config.name, key):
                        continue  # scored before a restart
                    ok, frame = capture.retrieve()
                    if not ok:
                        break
                    item = LineInput(config.name, key, f"frame:{this}", epoch + position if is_file else time.time(),
                                     time.monotonic(), frame=cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    self.on_event("input", "frame")
                    if self.config.drops_frames:
                        self._put_latest(item)
                    elif not self._put_blocking(item):
                        return
            finally:
                capture.release()
            if is_file:
                self.status = "finished"
                return
            self.status = "reconnecting"
            self.on_event("error", "source")
            self.stopping.wait(self.RECONNECT_SECONDS[0])


def make_source(config: SourceConfig, journal: Journal, on_event, wake) -> Source:
    kind = HotFolderSource if config.kind == "folder" else VideoSource
    return kind(config, journal, on_event, wake)
