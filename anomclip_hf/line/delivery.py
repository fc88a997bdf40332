"""Delivering journaled verdicts to one sink, in order, each until the sink confirms it.

A `Sink` sends a list of verdicts and answers how many of them (a prefix, in order) its receiver confirmed;
a failure (broker down, HTTP 500, OPC UA server gone, timeout) raises SinkError. A `SinkWorker` thread per sink
takes the oldest undelivered rows from the journal, sends them, marks the confirmed ones delivered and, on a
failure, keeps the rest in the journal and tries again after a back-off (0.2 s doubling to 10 s): a sink that is
down holds its verdicts and catches up in order when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Sequence

from ..errors import AnomCLIPError
from .config import SinkConfig
from .journal import Delivery, Journal

logger = logging.getLogger(__name__)
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class SinkError(AnomCLIPError, OSError):
    """A delivery attempt failed (receiver unreachable, refused, too slow); the verdicts stay in the journal.
    `confirmed`: how many of the attempt's verdicts, in order, the receiver did confirm."""

    confirmed = 0


class Sink:
    def __init__(self, config: SinkConfig):
        self.config, self.name = config, config.name

    def send(self, deliveries: Sequence[Delivery]) -> int:
        """Send in order; the number confirmed (a prefix). Raise SinkError when none could be."""
        raise NotImplementedError

    def reset(self) -> None:
        """Drop the connection after a failure (the next send reconnects)."""

    def close(self) -> None:
        self.reset()


class SinkWorker(threading.Thread):
    def __init__(self, sink: Sink, journal: Journal, metrics, ready_times: dict):
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.sink, self.journal, self.metrics, self.ready_times = sink, journal, metrics, ready_times
        self.wake = threading.Event()
        self.stopping = threading.Event()  # stop after the current attempt, whatever is left
        self.draining = threading.Event()  # stop once the backlog is empty
        self.failures = 0
        self.last_error: Optional[str] = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = self.journal.pending(self.sink.name, self.sink.config.batch)
                self.metrics.sink_backlog.labels(sink=self.sink.name).set(self.journal.backlog(self.sink.name))
                if not batch:
                    if self.draining.is_set():
                        return
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                confirmed = self._attempt(batch)
                if confirmed:
                    self._confirmed(batch[:confirmed])
                if confirmed < len(batch):
                    self._back_off()
                else:
                    self.failures = 0
        finally:
            self.sink.close()

    def _attempt(self, batch: list[Delivery]) -> int:
        try:
            confirmed = self.sink.send(batch)
            if confirmed < len(batch):
                raise SinkError(f"{len(batch) - confirmed} of {len(batch)} verdicts not confirmed")
            return confirmed
        except Exception as error:  # any failure of a sink's library is a failed attempt, never a lost verdict
            message = str(error) or type(error).__name__
            confirmed = getattr(error, "confirmed", 0)
            if self.failures == 0 or message != self.last_error:
                logger.warning("sink %s: delivery failed (%s); %d verdict(s) held, retrying", self.sink.name,
                               message, self.journal.backlog(self.sink.name))
            self.last_error = message
            self.metrics.sink_failures.labels(sink=self.sink.name).inc()
            self.journal.mark_failed(self.sink.name, batch[confirmed].seq if confirmed < len(batch) else
                                     batch[-1].seq, message)
            try:
                self.sink.reset()
            except Exception:  # a half-dead connection may fail to close too
                pass
            return confirmed

    def _confirmed(self, done: list[Delivery]) -> None:
        self.journal.mark_delivered(self.sink.name, [item.seq for item in done])
        now = time.monotonic()
        self.metrics.sink_delivered.labels(sink=self.sink.name).inc(len(done))
        for item in done:
            ready = self.ready_times.get((self.sink.name, item.verdict["input_id"]))
            if ready is not None:
                self.metrics.latency.labels(stage="delivery").observe(now - ready)
                self.ready_times.pop((self.sink.name, item.verdict["input_id"]), None)
        self.metrics.sink_backlog.labels(sink=self.sink.name).set(self.journal.backlog(self.sink.name))

    def _back_off(self) -> None:
        delay = BACKOFF_SECONDS[min(self.failures, len(BACKOFF_SECONDS) - 1)]
        self.failures += 1
        self.stopping.wait(delay)

    @property
    def status(self) -> str:
        return "ok" if self.failures == 0 else f"failing ({self.last_error})"
