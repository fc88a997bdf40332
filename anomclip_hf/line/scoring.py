"""The scoring loop: takes what the sources queued, scores it in batches (per loaded category, up to the
source's batch_size when inputs queue up, one at a time when they trickle in), and journals each verdict with
one pending delivery per sink.

Files are read here into memory once, with their size and modification time checked before and after: a file
changed or replaced while it was read gets an error verdict (its new version is a new input of the hot folder),
a file that vanished gets one too. Decoding is the Predictor's (the package's one image decoder and its limits).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional, Sequence

from .config import SourceConfig
from .journal import Journal
from .schema import verdict
from .sources import LineInput, Source

logger = logging.getLogger(__name__)


class Models:
    """The Predictors of the sources: one per (base, category, onnx, threshold); a base is loaded once for all
    of its categories."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._bases: dict = {}
        self._predictors: dict = {}

    def predictor(self, source: SourceConfig):
        from ..inference.predictor import Predictor

        key = source.model_key()
        if key not in self._predictors:
            if source.onnx is not None:
                predictor = Predictor.from_onnx(source.onnx, threshold=source.threshold, batch_size=source.batch_size,
                                                runtime=source.runtime)
            else:
                model = self._bases.get(source.base)
                if model is None:
                    from ..model.modeling_anomclip import AnomCLIPModel

                    model = self._bases[source.base] = AnomCLIPModel.from_base(source.base).to(self.device)
                state = model.load_category(source.category)
                predictor = Predictor.from_model(model, state.name, threshold=source.threshold,
                                                 batch_size=source.batch_size)
            self._predictors[key] = predictor
        return self._predictors[key]

    @staticmethod
    def identity(source: SourceConfig, predictor) -> dict:
        return {"base": source.base, "adapter": source.category or source.onnx,
                "engine": predictor.engine.description.name}


def read_stable(item: LineInput) -> tuple[Optional[bytes], Optional[str]]:
    """(the file's bytes, None), or (None, why) when it vanished or changed while it was read."""
    def state():
        stat = os.stat(item.path)
        return (stat.st_size, stat.st_mtime_ns), stat.st_ino

    try:
        before, inode = state()
        with open(item.path, "rb") as handle:
            data = handle.read()
        after, inode_after = state()
    except FileNotFoundError:
        return None, f"{item.input}: the file vanished before it was read"
    except OSError as error:
        return None, f"{item.input}: cannot read the file: {error.strerror or error}"
    if before != item.file_state or after != item.file_state or inode != inode_after or len(data) != after[0]:
        return None, (f"{item.input}: the file changed while it was read; its new version is scored as a new input")
    return data, None


class Scorer(threading.Thread):
    def __init__(self, sources: Sequence[Source], models: Models, journal: Journal, sink_names: Sequence[str],
                 metrics, overlay_dir: Optional[str], on_verdict: Callable[[dict, float], None],
                 wake: threading.Event):
        super().__init__(name="scorer", daemon=True)
        self.sources, self.models, self.journal, self.sink_names = list(sources), models, journal, list(sink_names)
        self.metrics, self.overlay_dir, self.on_verdict, self.wake = metrics, overlay_dir, on_verdict, wake
        self.stopping = threading.Event()  # set after the sources stopped: finish what is queued, then end
        self.idle = threading.Event()
        self.scored = 0

    def run(self) -> None:
        while True:
            groups = self._collect()
            for depth_source in self.sources:
                self.metrics.queue_depth.labels(source=depth_source.config.name).set(depth_source.queue.qsize())
            if not groups:
                self.idle.set()
                if self.stopping.is_set():
                    return
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            self.idle.clear()
            for source, items in groups:
                self._score(source, items)

    def _collect(self) -> list[tuple[Source, list[LineInput]]]:
        groups = []
        for source in self.sources:
            items = []
            while len(items) < source.config.batch_size:
                try:
                    items.append(source.queue.get_nowait())
                except Exception:  # queue.Empty
                    break
            if items:
                groups.append((source, items))
        return groups

    def _score(self, source: Source, items: list[LineInput]) -> None:
        config = source.config
        predictor = self.models.predictor(config)
        identity = self.models.identity(config, predictor)
        results: dict[int, dict] = {}
        usable, names, where = [], [], []
        for position, item in enumerate(items):
            if item.frame is not None:
                usable.append(item.frame)
                names.append(f"{config.name}/{item.input.replace(':', '_')}.png")
                where.append(position)
                continue
            data, problem = read_stable(item)
            if problem:
                results[position] = {"error": problem}
            else:
                usable.append(data)
                names.append(f"{config.name}/{os.path.splitext(item.input)[0]}.png")
                where.append(position)
        overlay_dir = self.overlay_dir if config.overlays else None
        if usable:
            try:
                predictions = predictor.predict(usable, names=names, overlay_dir=overlay_dir)
            except Exception as error:  # a scoring failure is an error verdict per input, never a lost one
                logger.exception("source %s: scoring failed", config.name)
                predictions = None
                for position in where:
                    results[position] = {"error": f"scoring failed: {error}", "stage": "scoring"}
            for position, prediction in zip(where, predictions or ()):
                if prediction.error:
                    results[position] = {"error": f"{items[position].input}: {prediction.error}"}
                else:
                    results[position] = {"score": prediction.score, "normalized_score": prediction.normalized_score,
                                         "decision": prediction.decision, "overlay": prediction.overlay}
        now = time.time()
        for position, item in enumerate(items):
            outcome = dict(results[position])
            stage = outcome.pop("stage", "decode")
            if outcome.get("error"):
                self.metrics.errors.labels(stage=stage).inc()
            message = verdict(source=config.name, key=item.key, input_name=item.input, source_time=item.source_time,
                              scored_time=now, category=predictor.category or "?", model=identity,
                              threshold=predictor.threshold, **outcome)
            self.journal.record_verdict(message, self.sink_names, key=item.key, path=item.path,
                                        source_time=item.source_time)
            source.done(item)
            self.scored += 1
            self.metrics.verdict(message["category"], "error" if message["error"] else message["decision"],
                                 time.monotonic() - item.ready)
            self.on_verdict(message, item.ready)
