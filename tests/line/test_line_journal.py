"""The journal: inputs recorded once, verdicts and deliveries committed together, pending rows in order,
and everything as it was after the file is opened again (a restart)."""

from __future__ import annotations

import sqlite3

from anomclip_hf.line.journal import Journal, QueuedInput
from anomclip_hf.line.schema import input_id, verdict


def message(key: str, score: float = 0.1) -> dict:
    return verdict(source="cam1", key=key, input_name=key, source_time=0.0, scored_time=1.0, category="widget",
                   score=score, normalized_score=0.25, decision="normal", threshold=0.2,
                   model={"base": "b", "adapter": "a", "engine": "torch"})


def test_inputs_are_recorded_once_and_queued_ones_survive_a_restart(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    item = QueuedInput(input_id("cam1", "a"), "cam1", "a", "a.png", "/x/a.png", 5.0)
    assert journal.enqueue(item) is True
    assert journal.enqueue(item) is False
    assert journal.known("cam1", "a") and not journal.known("cam2", "a")
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    assert again.queued("cam1") == [item]
    again.record_verdict(message("a"), ["mqtt", "csv"], key="a")
    assert again.queued("cam1") == []
    assert again.verdict(item.input_id)["score"] == 0.1
    assert sqlite3.connect(tmp_path / "j.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_deliveries_come_in_order_and_delivered_ones_never_again(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    keys = [f"k{i}" for i in range(5)]
    for i, key in enumerate(keys):
        journal.record_verdict(message(key, i / 10), ["mqtt", "plc"], key=key)
    pending = journal.pending("mqtt", limit=3)
    assert [d.verdict["input"] for d in pending] == keys[:3]
    assert [d.ordinal for d in pending] == [1, 2, 3]
    journal.mark_delivered("mqtt", [pending[0].seq, pending[1].seq])
    journal.mark_failed("mqtt", pending[2].seq, "broker down")
    journal.close()
    journal = Journal(tmp_path / "j.sqlite")  # a restart
    assert [d.verdict["input"] for d in journal.pending("mqtt")] == keys[2:]
    assert [d.ordinal for d in journal.pending("mqtt")] == [3, 4, 5]  # the PLC count does not move on a re-send
    assert journal.backlog("mqtt") == 3 and journal.backlog("plc") == 5
    assert journal.delivered("mqtt") == [input_id("cam1", k) for k in keys[:2]]
    # a verdict recorded twice (a restart scoring a queued input again) makes no second delivery row
    journal.record_verdict(message("k0"), ["mqtt", "plc"], key="k0")
    assert journal.backlog("plc") == 5 and journal.counts() == {"inputs": 5, "scored": 5}


def test_the_folder_sink_writes_each_verdict_once_and_repairs_a_cut_row(tmp_path):
    import csv

    from anomclip_hf.line.config import SinkConfig
    from anomclip_hf.line.journal import Delivery
    from anomclip_hf.line.sink_folder import FolderSink

    config = SinkConfig(name="files", type="folder", path=str(tmp_path / "out"))
    deliveries = [Delivery(i + 1, i + 1, message(f"k{i}", i / 10)) for i in range(3)]
    sink = FolderSink(config)
    assert sink.send(deliveries[:2]) == 2
    with open(sink.path, "a") as handle:  # a crash in the middle of the next row
        handle.write(deliveries[2].verdict["input_id"] + ",cam1,k2,0.2")
    again = FolderSink(config)  # the restart re-sends the last batch: k1 again, k2 for the first time
    assert again.send(deliveries[1:]) == 2
    rows = list(csv.DictReader(open(again.path)))
    assert [row["path"] for row in rows] == ["k0", "k1", "k2"]
    assert [float(row["image_score"]) for row in rows] == [0.0, 0.1, 0.2]
