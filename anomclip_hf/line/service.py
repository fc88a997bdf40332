"""`LineService`: the sources, the scoring loop, one delivery worker per sink, the journal and the metrics
endpoint of `anomclip watch`, started and stopped together.

Stopping (SIGTERM, SIGINT, or every source finished, e.g. a video file at its end): the sources stop taking
new inputs, what they queued is scored and journaled, the sinks get up to `drain_seconds` to deliver their
backlog (what they cannot deliver stays in the journal for the next start), then the service returns 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Optional

from ..io.run_lock import folder_lock
from ..serving.metrics import MetricsServer, ServiceMetrics
from .config import LineConfig, LineConfigError
from .delivery import SinkWorker
from .journal import JOURNAL_FILE, Journal
from .scoring import Models, Scorer
from .sink_folder import FolderSink
from .sink_mqtt import MqttSink
from .sink_opcua import OpcUaSink
from .sink_webhook import WebhookSink
from .sources import make_source

logger = logging.getLogger(__name__)
SINK_CLASSES = {"mqtt": MqttSink, "opcua": OpcUaSink, "webhook": WebhookSink, "folder": FolderSink}


class LineService:
    def __init__(self, config: LineConfig, models: Optional[Models] = None):
        self.config = config
        self.models = models or Models(config.device)
        self.metrics = ServiceMetrics()
        self.stop_requested = threading.Event()
        self.journal: Optional[Journal] = None
        self.sources, self.workers, self.scorer, self.server = [], [], None, None
        self._ready_times: dict = {}

    # ------------------------------------------------------------------ lifecycle
    def run(self, install_signals: bool = True, on_ready=None) -> int:
        os.makedirs(self.config.state, exist_ok=True)
        with folder_lock(self.config.state, "anomclip watch"):
            previous = {}
            if install_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    previous[signum] = signal.signal(signum, lambda *_: self.stop_requested.set())
            try:
                self.start()
                if on_ready is not None:
                    on_ready(self)
                while not self.stop_requested.wait(0.2):
                    if all(source.finished.is_set() for source in self.sources) and self.scorer.idle.is_set() \
                            and all(source.queue.empty() for source in self.sources):
                        break
            finally:
                self.drain()
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return 0

    def start(self) -> None:
        config = self.config
        if config.metrics_port is not None:
            try:
                self.server = MetricsServer(self.metrics, self.health, config.metrics_host, config.metrics_port)
            except OSError as error:
                raise LineConfigError(f"metrics.port: cannot listen on {config.metrics_host}:{config.metrics_port}: "
                                      f"{error.strerror or error}") from None
        for index, source in enumerate(config.sources):  # load every model first: a bad one fails at once
            try:
                self.models.predictor(source)
            except (ValueError, OSError) as error:
                if self.server is not None:
                    self.server.close()
                field = "onnx" if source.onnx else "category"
                raise LineConfigError(f"sources[{index}].{field} ({source.name}): {error}") from error
        self.journal = Journal(os.path.join(config.state, JOURNAL_FILE))
        wake = threading.Event()
        self.sources = [make_source(source, self.journal, self._on_source_event(source.name), wake)
                        for source in config.sources]
        sinks = [SINK_CLASSES[sink.type](sink) for sink in config.sinks]
        self.workers = [SinkWorker(sink, self.journal, self.metrics, self._ready_times) for sink in sinks]
        folder = next((sink.folder for sink in sinks if isinstance(sink, FolderSink)), None)
        overlay_dir = folder or os.path.join(config.state, "overlays-root")
        self.scorer = Scorer(self.sources, self.models, self.journal, [sink.name for sink in sinks], self.metrics,
                             overlay_dir, self._on_verdict, wake)
        for thread in (*self.workers, self.scorer, *self.sources):
            thread.start()
        logger.info("watching %d source(s), delivering to %d sink(s)", len(self.sources), len(self.workers))

    def drain(self) -> None:
        if self.journal is None:
            return  # the start failed before anything ran
        for source in self.sources:
            source.stop()
        for source in self.sources:
            source.join(10)
        if self.scorer is not None:
            self.scorer.stopping.set()
            self.scorer.wake.set()
            self.scorer.join()
        deadline = time.monotonic() + self.config.drain_seconds
        for worker in self.workers:
            worker.draining.set()
            worker.wake.set()
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            worker.stopping.set()
            worker.wake.set()
        for worker in self.workers:
            worker.join(5 + worker.sink.config.timeout)
        held = {worker.sink.name: self.journal.backlog(worker.sink.name) for worker in self.workers}
        if any(held.values()):
            logger.warning("stopped with verdicts held in the journal for the next start: %s", held)
        if self.server is not None:
            self.server.close()
        if not any(worker.is_alive() for worker in self.workers):
            self.journal.close()  # else a sink stuck in its library still holds it; the process exit closes it

    # ------------------------------------------------------------------ events
    def _on_source_event(self, name: str):
        def event(kind: str, what: str) -> None:
            if kind == "input":
                self.metrics.inputs.labels(source=name).inc()
            elif kind == "dropped":
                self.metrics.dropped_frames.labels(source=name).inc()
            elif kind == "error":
                self.metrics.errors.labels(stage=what).inc()
        return event

    def _on_verdict(self, message: dict, ready: float) -> None:
        for worker in self.workers:
            self._ready_times[(worker.sink.name, message["input_id"])] = ready
            worker.wake.set()

    def health(self) -> dict:
        if self.scorer is None:
            return {"status": "starting", "scored": 0, "sources": {}, "sinks": {}}
        sources = {source.config.name: {"status": source.status, "queued": source.queue.qsize(),
                                        "dropped_frames": source.dropped} for source in self.sources}
        sinks = {worker.sink.name: {"status": worker.status, "backlog": self.journal.backlog(worker.sink.name)}
                 for worker in self.workers}
        return {"status": "ok" if self.scorer.is_alive() and not self.stop_requested.is_set() else "stopping",
                "scored": self.scorer.scored, "sources": sources, "sinks": sinks}


@contextlib.contextmanager
def running(config: LineConfig, models: Optional[Models] = None):
    """A LineService on a background thread (tests, notebooks); stops and drains on exit."""
    service = LineService(config, models)
    ready, failure = threading.Event(), []

    def target():
        try:
            service.run(install_signals=False, on_ready=lambda _: ready.set())
        except BaseException as error:  # handed to the caller below
            failure.append(error)
            ready.set()

    thread = threading.Thread(target=target, name="line-service", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        raise failure[0]
    try:
        yield service
    finally:
        service.stop_requested.set()
        thread.join()
