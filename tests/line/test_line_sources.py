"""Sources of the line: a hot folder takes a file once it stopped changing (sub-folders, never twice, moved
when asked), a file changed or gone while it is read gets an error, a video is sampled at the stated rate with
each frame's time, and a live source drops the oldest frames (counted) instead of waiting."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from line_video import write_video

from anomclip_hf.line.config import SourceConfig
from anomclip_hf.line.journal import Journal
from anomclip_hf.line.schema import verdict
from anomclip_hf.line.scoring import read_stable
from anomclip_hf.line.sources import HotFolderSource, VideoSource

PNG = bytes.fromhex("89504e470d0a1a0a")  # a PNG signature: the content does not matter for the source


def source_for(tmp_path, cls=HotFolderSource, **settings):
    events = []
    config = SourceConfig(name="cam1", kind=settings.pop("kind", "folder"),
                          location=settings.pop("location", str(tmp_path / "hot")), base="b", category="c",
                          **settings)
    journal = Journal(tmp_path / "journal.sqlite")
    return cls(config, journal, lambda kind, what: events.append((kind, what)), threading.Event()), events


def queued(source) -> list:
    items = []
    while not source.queue.empty():
        items.append(source.queue.get_nowait())
    return items


def test_a_file_is_taken_once_it_stopped_changing(tmp_path):
    (tmp_path / "hot" / "sub").mkdir(parents=True)
    source, events = source_for(tmp_path, settle=0.3)
    growing = tmp_path / "hot" / "sub" / "a.png"
    growing.write_bytes(PNG)
    (tmp_path / "hot" / ".hidden.png").write_bytes(PNG)
    (tmp_path / "hot" / "notes.txt").write_text("not an image")
    for chunk in range(4):  # a slow writer: never unchanged for `settle`
        source.scan()
        time.sleep(0.1)
        with open(growing, "ab") as handle:
            handle.write(b"x" * 10)
    source.scan()
    assert queued(source) == []
    time.sleep(0.35)
    source.scan()
    (item,) = queued(source)
    assert item.input == os.path.join("sub", "a.png") and item.path == str(growing)
    assert item.file_state == (os.path.getsize(growing), os.stat(growing).st_mtime_ns)
    assert item.source_time == pytest.approx(os.stat(growing).st_mtime)
    assert events == [("input", "file")]
    time.sleep(0.35)
    source.scan()
    assert queued(source) == []  # never twice


def test_restart_skips_known_files_requeues_unscored_ones_and_moves_done_ones(tmp_path):
    (tmp_path / "hot").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "hot" / name).write_bytes(PNG + name.encode())
    first, _ = source_for(tmp_path, settle=0.0, move_to="done")
    first.scan()
    first.scan()
    a, b = sorted(queued(first), key=lambda item: item.input)
    first.journal.record_verdict(verdict(source="cam1", key=a.key, input_name=a.input, source_time=0, scored_time=0,
                                         category="c", score=0.1, model={"base": "b", "adapter": "c",
                                                                          "engine": "torch"}), ["s"], key=a.key)
    first.journal.close()  # "killed" here: a is scored but not moved, b is queued but not scored
    second, _ = source_for(tmp_path, settle=0.0, move_to="done")
    restored = second.journal.queued("cam1")
    assert [item.input for item in restored] == ["b.png"]
    thread = threading.Thread(target=second.produce, daemon=True)
    thread.start()
    time.sleep(0.5)
    second.stop()
    thread.join(5)
    again = queued(second)
    assert [item.input for item in again] == ["b.png"]  # b once (from the journal), a never again
    assert (tmp_path / "hot" / "done" / "a.png").exists() and not (tmp_path / "hot" / "a.png").exists()
    assert (tmp_path / "hot" / "b.png").exists()  # not scored yet: not moved
    second.done(again[0])
    assert (tmp_path / "hot" / "done" / "b.png").exists()


def test_a_file_changed_replaced_or_gone_while_read_is_an_error(tmp_path):
    (tmp_path / "hot").mkdir()
    path = tmp_path / "hot" / "a.png"
    path.write_bytes(PNG + b"first")
    source, _ = source_for(tmp_path, settle=0.0)
    source.scan()
    source.scan()
    (item,) = queued(source)
    assert read_stable(item) == (PNG + b"first", None)
    replacement = tmp_path / "hot" / "new.png"
    replacement.write_bytes(PNG + b"second version")
    os.replace(replacement, path)
    data, problem = read_stable(item)
    assert data is None and "changed while it was read" in problem and "a.png" in problem
    path.unlink()
    assert "vanished" in read_stable(item)[1]


def test_a_video_is_sampled_at_the_stated_rate_and_resumes_after_a_restart(tmp_path):
    video = tmp_path / "line.avi"
    frames = write_video(video, frames=12, fps=10.0)
    source, events = source_for(tmp_path, VideoSource, kind="video", location=str(video), fps=4.0, queue=100)
    source.run()
    items = queued(source)
    # 10 fps sampled at 4 per second of video: one frame per 0.25 s of stream time
    assert [item.input for item in items] == ["frame:0", "frame:3", "frame:5", "frame:8", "frame:10"]
    assert [round(item.source_time - items[0].source_time, 2) for item in items] == [0.0, 0.3, 0.5, 0.8, 1.0]
    assert np.array_equal(items[1].frame, frames[3])
    assert source.finished.is_set() and source.dropped == 0
    for item in items[:2]:
        source.journal.record_verdict(verdict(source="cam1", key=item.key, input_name=item.input, source_time=0,
                                              scored_time=0, category="c", score=0.1,
                                              model={"base": "b", "adapter": "c", "engine": "torch"}), [], key=item.key)
    again, _ = source_for(tmp_path, VideoSource, kind="video", location=str(video), fps=4.0, queue=100)
    again.run()
    assert [item.input for item in queued(again)] == ["frame:5", "frame:8", "frame:10"]


def test_a_live_source_drops_the_oldest_frames_and_counts_them(tmp_path):
    video = tmp_path / "line.avi"
    frames = write_video(video, frames=12, fps=10.0)
    source, events = source_for(tmp_path, VideoSource, kind="video", location=str(video), live=True, queue=2)
    source.run()
    items = queued(source)
    assert [item.input for item in items] == ["frame:10", "frame:11"]  # latest wins
    assert source.dropped == 10 and events.count(("dropped", "frame")) == 10
    assert np.array_equal(items[-1].frame, frames[-1])
