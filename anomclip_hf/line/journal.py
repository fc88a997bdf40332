"""The line's journal: one SQLite file (WAL) holding every input and every sink's delivery of its verdict.

What a crash (kill -9, power kept) leaves behind is exactly what was committed:
- an input is recorded ("queued") before it is scored; after a restart queued files are scored again, and a
  file or frame whose key is recorded is never queued a second time;
- a verdict and one delivery row per sink are committed in one transaction; a delivery row is marked
  delivered only after its sink confirmed it (MQTT PUBACK, HTTP 2xx, OPC UA write answered, CSV row synced);
- so after a restart every undelivered row is sent again, in the order of its sequence number, and nothing
  marked delivered is sent again. A crash between a sink's confirmation and the mark re-sends that one
  verdict (same input_id, same content): at-least-once delivery, exactly-once in effect for a receiver that
  keys on input_id.

WAL with synchronous=NORMAL survives a killed process; a power cut can lose the last commits (set
synchronous=FULL with `durable=True` to survive that too, at a cost per input).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

JOURNAL_FILE = "journal.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, key TEXT NOT NULL, input TEXT NOT NULL, path TEXT,
    source_time REAL NOT NULL, state TEXT NOT NULL, verdict TEXT, recorded REAL NOT NULL,
    UNIQUE (source, key));
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, input_id TEXT NOT NULL REFERENCES inputs(id), sink TEXT NOT NULL,
    ordinal INTEGER NOT NULL, delivered REAL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    UNIQUE (input_id, sink), UNIQUE (sink, ordinal));
CREATE INDEX IF NOT EXISTS deliveries_by_sink ON deliveries (sink, delivered, seq);
"""


@dataclass
class QueuedInput:
    input_id: str
    source: str
    key: str
    input: str
    path: Optional[str]
    source_time: float


@dataclass
class Delivery:
    seq: int
    ordinal: int  # 1, 2, 3 ... the verdict's place in this sink's stream (the OPC UA running count)
    verdict: dict


class Journal:
    """Thread-safe (one connection behind a lock); one process per journal (the service holds a folder lock)."""

    def __init__(self, path: str, durable: bool = False):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: Iterable[tuple[str, Sequence]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, values in statements:
                    self._db.execute(sql, values)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, values: Sequence = ()) -> list:
        with self._lock:
            return self._db.execute(sql, values).fetchall()

    # ------------------------------------------------------------------ inputs
    def known(self, source: str, key: str) -> bool:
        return bool(self._read("SELECT 1 FROM inputs WHERE source = ? AND key = ?", (source, key)))

    def enqueue(self, item: QueuedInput) -> bool:
        """Record an input before it is scored; False when its (source, key) is recorded already."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO inputs (id, source, key, input, path, source_time, state, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                (item.input_id, item.source, item.key, item.input, item.path, item.source_time, time.time()))
            return cursor.rowcount == 1

    def queued(self, source: str) -> list[QueuedInput]:
        """Inputs of `source` recorded but not scored (a restart scores them first), oldest first."""
        rows = self._read("SELECT id, source, key, input, path, source_time FROM inputs WHERE source = ? AND "
                          "state = 'queued' ORDER BY recorded, rowid", (source,))
        return [QueuedInput(*row) for row in rows]

    def record_verdict(self, message: dict, sinks: Sequence[str], *, key: str, path: Optional[str] = None,
                       source_time: float = 0.0) -> None:
        """The verdict and one pending delivery per sink, in one transaction (a frame's input row is made here)."""
        identifier, text = message["input_id"], json.dumps(message, sort_keys=True)
        statements = [("INSERT OR IGNORE INTO inputs (id, source, key, input, path, source_time, state, recorded) "
                       "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                       (identifier, message["source"], key, message["input"], path, source_time, time.time())),
                      ("UPDATE inputs SET state = 'scored', verdict = ? WHERE id = ?", (text, identifier))]
        statements += [("INSERT OR IGNORE INTO deliveries (input_id, sink, ordinal) VALUES (?, ?, (SELECT "
                        "COALESCE(MAX(ordinal), 0) + 1 FROM deliveries WHERE sink = ?))", (identifier, sink, sink))
                       for sink in sinks]
        self._write(statements)

    def verdict(self, identifier: str) -> Optional[dict]:
        rows = self._read("SELECT verdict FROM inputs WHERE id = ?", (identifier,))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    # ------------------------------------------------------------------ deliveries
    def pending(self, sink: str, limit: int = 32) -> list[Delivery]:
        """The oldest undelivered verdicts of `sink`, in sequence order."""
        rows = self._read(
            "SELECT d.seq, d.ordinal, i.verdict "
            "FROM deliveries d JOIN inputs i ON i.id = d.input_id WHERE d.sink = ? AND d.delivered IS NULL "
            "ORDER BY d.seq LIMIT ?", (sink, limit))
        return [Delivery(seq, ordinal, json.loads(text)) for seq, ordinal, text in rows]

    def mark_delivered(self, sink: str, seqs: Sequence[int]) -> None:
        now = time.time()
        self._write([("UPDATE deliveries SET delivered = ?, attempts = attempts + 1, last_error = NULL "
                      "WHERE seq = ? AND sink = ?", (now, seq, sink)) for seq in seqs])

    def mark_failed(self, sink: str, seq: int, error: str) -> None:
        self._write([("UPDATE deliveries SET attempts = attempts + 1, last_error = ? WHERE seq = ? AND sink = ?",
                      (error[:500], seq, sink))])

    def backlog(self, sink: str) -> int:
        return self._read("SELECT COUNT(*) FROM deliveries WHERE sink = ? AND delivered IS NULL", (sink,))[0][0]

    def delivered(self, sink: str) -> list[str]:
        """input_ids delivered to `sink`, in delivery order."""
        return [row[0] for row in self._read("SELECT input_id FROM deliveries WHERE sink = ? AND delivered IS NOT "
                                             "NULL ORDER BY seq", (sink,))]

    def counts(self) -> dict:
        (inputs, scored), = self._read("SELECT COUNT(*), SUM(state = 'scored') FROM inputs")
        return {"inputs": inputs, "scored": scored or 0}
