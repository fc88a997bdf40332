"""The scoring loop: sources sharing a base load it once, queued inputs are scored in batches of the source's
batch_size, each verdict equals the Predictor's score and is journaled with one delivery per sink."""

from __future__ import annotations

import threading
import time

import pytest
from scale_setup import write_scale_workspace

from anomclip_hf.line.config import SourceConfig
from anomclip_hf.line.journal import Journal
from anomclip_hf.line.scoring import Models, Scorer
from anomclip_hf.line.sources import LineInput, Source
from anomclip_hf.serving.metrics import ServiceMetrics


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip):
    return write_scale_workspace(tmp_path_factory.mktemp("line-scoring"), tiny_clip)


def test_sources_share_a_base_and_inputs_are_scored_in_batches(workspace, tmp_path):
    models = Models()
    widget = SourceConfig(name="a", kind="folder", location=str(tmp_path), base=str(workspace.base),
                          category=str(workspace.widget), batch_size=3)
    gadget = SourceConfig(name="b", kind="folder", location=str(tmp_path), base=str(workspace.base),
                          category=str(workspace.gadget))
    first, second = models.predictor(widget), models.predictor(gadget)
    assert first.model is second.model and (first.category, second.category) == ("widget", "gadget")
    assert models.predictor(widget) is first

    batches = []
    original = first.predict
    first.predict = lambda images, **options: batches.append(len(images)) or original(images, **options)
    journal, wake = Journal(tmp_path / "j.sqlite"), threading.Event()
    source = Source(widget, journal, lambda *_: None, wake)
    for path in workspace.good[:5]:
        stat = path.stat()
        source.queue.put(LineInput("a", f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}", path.name, stat.st_mtime,
                                   time.monotonic(), path=str(path), file_state=(stat.st_size, stat.st_mtime_ns)))
    verdicts = []
    scorer = Scorer([source], models, journal, ["mqtt", "files"], ServiceMetrics(), None,
                    lambda message, ready: verdicts.append(message), wake)
    scorer.stopping.set()  # score what is queued, then end
    scorer.run()
    assert batches == [3, 2]
    want = {p.name: r.score for p, r in zip(workspace.good[:5], original(workspace.good[:5]))}
    assert {v["input"]: v["score"] for v in verdicts} == pytest.approx(want, abs=1e-6)
    assert journal.backlog("mqtt") == journal.backlog("files") == 5
    assert [d.verdict["input"] for d in journal.pending("files")] == [p.name for p in workspace.good[:5]]


def test_an_exported_model_scores_a_source_on_onnx_runtime(workspace, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from anomclip_hf.export.onnx_export import export_onnx
    from anomclip_hf.inference.predictor import Predictor
    from anomclip_hf.model.modeling_anomclip import AnomCLIPModel

    model = AnomCLIPModel.from_base(str(workspace.base))
    model.load_category(str(workspace.widget))
    export_onnx(model, str(tmp_path / "widget.onnx"), category="widget")
    config = SourceConfig(name="onnx", kind="folder", location=str(tmp_path), onnx=str(tmp_path / "widget.onnx"))
    models = Models()
    journal, wake = Journal(tmp_path / "j.sqlite"), threading.Event()
    source = Source(config, journal, lambda *_: None, wake)
    path = workspace.good[0]
    stat = path.stat()
    source.queue.put(LineInput("onnx", "k", path.name, stat.st_mtime, time.monotonic(), path=str(path),
                               file_state=(stat.st_size, stat.st_mtime_ns)))
    verdicts = []
    scorer = Scorer([source], models, journal, ["files"], ServiceMetrics(), None,
                    lambda message, ready: verdicts.append(message), wake)
    scorer.stopping.set()
    scorer.run()
    (message,) = verdicts
    assert message["model"] == {"base": None, "adapter": str(tmp_path / "widget.onnx"), "engine": "onnxruntime"}
    assert message["category"] == "widget"
    assert message["score"] == pytest.approx(Predictor.from_onnx(str(tmp_path / "widget.onnx")).predict(
        [str(path)])[0].score, abs=1e-6)
