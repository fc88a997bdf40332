"""The folder sink: scores.csv (one row per verdict, appended and synced) beside the overlays/ the scorer writes
there, as `anomclip predict` lays them out. Rows carry the input_id; a verdict whose id is in the file already is
not written again, and a row cut short by a crash is removed when the sink opens, so the file holds each
verdict once. (Deliveries come in order, so a re-sent verdict can only be one of the last rows written: the sink
remembers the ids of the last few thousand rows, not of the whole file.)"""

from __future__ import annotations

import collections
import csv
import io
import os
from typing import Sequence

from .delivery import Sink
from .journal import Delivery

SCORES_FILE = "scores.csv"
COLUMNS = ("input_id", "source", "path", "image_score", "normalized_score", "decision", "threshold", "category",
           "source_time", "scored_time", "overlay", "error")


class FolderSink(Sink):
    def __init__(self, config):
        super().__init__(config)
        self.folder = config.path
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, SCORES_FILE)
        self._recent: collections.deque = collections.deque(maxlen=max(4096, 2 * config.batch))
        self.written: set = set()
        for identifier in self._repair_and_read():
            self._remember(identifier)

    def _remember(self, identifier: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self.written.discard(self._recent[0])
        self._recent.append(identifier)
        self.written.add(identifier)

    def _repair_and_read(self) -> list:
        if not os.path.exists(self.path):
            with open(self.path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(COLUMNS)
                handle.flush()
                os.fsync(handle.fileno())
            return []
        with open(self.path, "rb") as handle:
            data = handle.read()
        if data and not data.endswith(b"\n"):  # the last row was cut by a crash: it is written again
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                data = data[: data.rfind(b"\n") + 1]
        rows = csv.DictReader(io.StringIO(data.decode("utf-8")))
        return [row["input_id"] for row in rows]

    def send(self, deliveries: Sequence[Delivery]) -> int:
        lines = io.StringIO()
        writer = csv.writer(lines)
        for delivery in deliveries:
            verdict = delivery.verdict
            if verdict["input_id"] in self.written:
                continue
            writer.writerow([verdict["input_id"], verdict["source"], verdict["input"],
                             "" if verdict["score"] is None else repr(verdict["score"]),
                             "" if verdict["normalized_score"] is None else repr(verdict["normalized_score"]),
                             verdict["decision"], "" if verdict["threshold"] is None else repr(verdict["threshold"]),
                             verdict["category"], verdict["source_time"], verdict["scored_time"],
                             verdict["overlay"] or "", verdict["error"] or ""])
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            handle.write(lines.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        for delivery in deliveries:
            if delivery.verdict["input_id"] not in self.written:
                self._remember(delivery.verdict["input_id"])
        return len(deliveries)

