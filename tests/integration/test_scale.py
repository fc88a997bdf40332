"""One Predictor for every entry point, accelerate shards, the Ray Data actor pool.

Every engine is held to the scores of the plain scoring loop (`score_images` on a model loaded here) and to
exact input/output counts. Ray runs on a local cluster of 2 CPUs started (and always shut down) here;
accelerate runs as a real `accelerate launch` of `python -m anomclip_hf predict` with 2 processes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scale_setup import write_scale_workspace

from anomclip_hf.inference.batch_scoring import score_images
from anomclip_hf.inference.predictor import Predictor, PredictorSpec
from anomclip_hf.model.modeling_anomclip import AnomCLIPModel

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.fixture(scope="module")
def workspace(tiny_clip, tmp_path_factory):
    return write_scale_workspace(tmp_path_factory.mktemp("scale"), tiny_clip)


@pytest.fixture(scope="module")
def reference(workspace):
    """The plain loop's scores and maps of the good images (path -> value), the stored thresholds."""
    model = AnomCLIPModel.from_base(str(workspace.base))
    model.load_category(str(workspace.widget))
    paths = [str(p) for p in workspace.good]
    scores, maps = {}, {}
    for batch in score_images(model, paths, batch_size=3, category="widget", progress=False):
        for offset, index in enumerate(batch.indices):
            scores[paths[index]] = float(batch.image_scores[offset])
            maps[paths[index]] = batch.anomaly_maps[offset]
    record = json.loads((workspace.widget / "category.json").read_text())
    return {"scores": scores, "maps": maps, "model": model, "threshold": record["decision_threshold"],
            "pixel_threshold": record["pixel_threshold"]}


def expected_outcome(score: float, threshold: float) -> tuple:
    """decision and normalised score computed here: >= threshold is anomalous; score / (2 t) clipped."""
    return ("anomalous" if score >= threshold else "normal"), min(max(score / (2 * threshold), 0.0), 1.0)


def read_scores_csv(path: Path) -> dict:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


# ---------------------------------------------------------------------------------------------- Predictor
def test_predictor_scores_paths_pil_arrays_and_bytes_as_the_scoring_loop(workspace, reference):
    predictor = Predictor.from_pretrained(str(workspace.base), str(workspace.widget), batch_size=2)
    paths = [str(p) for p in workspace.good[:4]]
    rgb = [Image.open(p).convert("RGB") for p in paths]
    inputs = [paths[0], rgb[1], np.asarray(rgb[2]), Path(paths[3]).read_bytes()]
    results = predictor.predict(inputs, maps=True)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.source for r in results] == [paths[0], "<in-memory image>", "<in-memory image>", "<image bytes>"]
    threshold = reference["threshold"]
    assert predictor.threshold == pytest.approx(threshold, abs=0) and predictor.category == "widget"
    for result, path in zip(results, paths):
        assert result.error is None
        assert abs(result.score - reference["scores"][path]) < 1e-6
        decision, normalized = expected_outcome(result.score, threshold)
        assert result.decision == decision and result.normalized_score == pytest.approx(normalized, abs=1e-12)
        assert np.abs(result.anomaly_map - reference["maps"][path]).max() < 1e-6


def test_predictor_reports_each_bad_input_at_its_place_and_scores_the_rest(workspace, reference):
    predictor = Predictor.from_model(reference["model"], "widget")
    good = str(workspace.good[0])
    inputs = [b"\x89PNG broken", good, str(workspace.broken), np.zeros((4, 4), np.float32), {"not": "an image"},
              b"", good]
    results = predictor.predict(inputs)
    assert len(results) == len(inputs)
    failed = {r.index: r.error for r in results if r.error}
    assert sorted(failed) == [0, 2, 3, 4, 5]
    assert "<image bytes>" in failed[0] and "no image format" in failed[0]
    assert str(workspace.broken) in failed[2]
    assert "uint8" in failed[3] and "dict" in failed[4] and "no image data" in failed[5]
    for index in (1, 6):
        assert abs(results[index].score - reference["scores"][good]) < 1e-6
    assert all(r.score is None and r.decision == "" for r in results if r.error)


def test_predictor_writes_overlays_on_request_and_the_threshold_override(workspace, reference, tmp_path):
    predictor = Predictor.from_model(reference["model"], "widget", threshold=0.14)
    paths = [str(p) for p in workspace.good[:3]]
    results = predictor.predict(paths, overlay_dir=str(tmp_path), names=["a.png", "b/c.png", "d.png"])
    assert [Path(r.overlay).relative_to(tmp_path).as_posix() for r in results] == \
        ["overlays/a.png", "overlays/b/c.png", "overlays/d.png"]
    for result, path in zip(results, paths):
        assert Image.open(result.overlay).text["score"] == f"{reference['scores'][path]:.6f}"
        decision, normalized = expected_outcome(result.score, 0.14)
        assert (result.decision, result.threshold) == (decision, 0.14)
        assert result.normalized_score == pytest.approx(normalized, abs=1e-12)
        assert result.anomaly_map is None  # maps only when asked


def test_predictor_on_onnx_runtime_agrees_with_pytorch(workspace, reference, tmp_path):
    pytest.importorskip("onnxruntime")  # the onnx extra (in dev)
    from anomclip_hf.export import export_onnx

    export_onnx(reference["model"], str(tmp_path / "widget.onnx"), category="widget")
    predictor = PredictorSpec(onnx=str(tmp_path / "widget.onnx")).build()
    assert predictor.engine.name == "onnxruntime" and predictor.threshold == pytest.approx(reference["threshold"])
    paths = [str(p) for p in workspace.good]
    results = predictor.predict(paths + [str(workspace.broken)])
    assert results[-1].error and str(workspace.broken) in results[-1].error
    for result, path in zip(results, paths):
        assert abs(result.score - reference["scores"][path]) < 1e-4  # ONNX Runtime's float kernels
        assert result.decision == expected_outcome(result.score, reference["threshold"])[0]


def test_pipeline_and_predict_command_score_through_the_predictor(workspace, reference, tmp_path):
    from transformers import pipeline

    from anomclip_hf import ImageAnomalyDetectionPipeline  # noqa: F401 - registers the task
    from anomclip_hf.cli import main

    paths = [str(p) for p in workspace.good[:2]]
    detector = pipeline("image-anomaly-detection", model=reference["model"], category="widget")
    for answer, path in zip(detector(paths, batch_size=2), paths):
        decision, normalized = expected_outcome(answer["score"], reference["threshold"])
        assert abs(answer["score"] - reference["scores"][path]) < 1e-6
        assert (answer["decision"], answer["threshold"]) == (decision, reference["threshold"])
        assert answer["normalized_score"] == pytest.approx(normalized, abs=1e-12)
    assert main(["predict", "--base", str(workspace.base), "--category", str(workspace.widget), "--images",
                 *paths, "--output", str(tmp_path / "out"), "--quiet"]) == 0
    rows = read_scores_csv(tmp_path / "out" / "scores.csv")
    assert sorted(rows) == sorted(paths)
    for path, row in rows.items():
        assert float(row["image_score"]) == pytest.approx(reference["scores"][path], abs=1e-6)


def test_predictor_spec_needs_a_model(workspace):
    with pytest.raises(ValueError, match="base and category .* or onnx"):
        PredictorSpec(base=str(workspace.base))


# ---------------------------------------------------------------------------------------------- accelerate
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_predict(workspace, output: Path, *extra: str, images=None, timeout: float = 240):
    """`accelerate launch --multi_gpu --num_processes 2 -m anomclip_hf predict ...` (2 CPU processes: torchrun,
    a gloo group), on its own rendezvous port."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "anomclip_hf", "predict",
               "--base", str(workspace.base), "--category", str(workspace.widget),
               "--images", *(images or [str(workspace.images)]), "--output", str(output), "--quiet",
               "--overlays", "all", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))


def test_accelerate_two_processes_merge_one_scores_csv_in_input_order_and_resume(workspace, reference, tmp_path):
    good = [str(p) for p in workspace.good]
    output = tmp_path / "out"
    first = launch_predict(workspace, output, images=good)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("images scored") == 1  # one summary, from the main process
    with open(output / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == good  # every input once, in input order
    for row in rows:
        assert float(row["image_score"]) == pytest.approx(reference["scores"][row["path"]], abs=1e-6)
        decision, normalized = expected_outcome(float(row["image_score"]), reference["threshold"])
        assert row["decision"] == decision
    overlays = sorted(p.relative_to(output / "overlays").as_posix() for p in (output / "overlays").rglob("*.png"))
    assert overlays == sorted(Path(p).relative_to(workspace.images).as_posix() for p in good)
    shards = sorted(p.name for p in (output / "shards").iterdir() if p.is_dir())
    assert shards == ["00000-of-00002", "00001-of-00002"]
    sizes = [json.loads((output / "shards" / s / "done.json").read_text())["images"] for s in shards]
    assert sum(sizes) == len(good) and min(sizes) >= 1
    before = (output / "scores.csv").read_bytes()
    stamps = {s: (output / "shards" / s / "scores.csv").stat().st_mtime_ns for s in shards}
    again = launch_predict(workspace, output, images=good)  # the same command: both shards reused
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished shard(s) of an earlier run reused" in again.stderr
    assert (output / "scores.csv").read_bytes() == before
    assert {s: (output / "shards" / s / "scores.csv").stat().st_mtime_ns for s in shards} == stamps
    for mine in (output / "shards" / "notes.txt", output / "shards" / shards[0] / "mine.txt",
                 output / "overlays" / "mine.png"):
        mine.write_text("the user's")  # files no run wrote, in the folders a run uses
    other = launch_predict(workspace, output, "--threshold", "0.01", "--overlays", "none",
                           images=good[:3])  # other settings: afresh
    assert other.returncode == 0, other.stderr[-3000:]
    assert "reused" not in other.stderr
    assert {row["decision"] for row in read_scores_csv(output / "scores.csv").values()} == {"anomalous"}
    # the earlier run's overlays went (its manifest listed them); the user's files stayed
    assert sorted(p.name for p in (output / "overlays").rglob("*")) == ["mine.png"]
    assert (output / "shards" / "notes.txt").exists() and (output / "shards" / shards[0] / "mine.txt").exists()


# ---------------------------------------------------------------------------------------------- Ray
@contextlib.contextmanager
def local_ray_cluster():
    """A local Ray cluster of 2 CPUs, always shut down; its workers see the package and tests/."""
    import ray

    here = str(Path(__file__).resolve().parent)  # this module: its DyingSpec travels to the workers by name
    path = os.pathsep.join([str(REPO), str(TESTS), here, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")  # the ray extra (in dev)
    with local_ray_cluster() as ray:
        yield ray


class DyingPredictor:
    """Wraps a Predictor; the first actor to meet `victim` kills its own process (once: a marker file)."""

    def __init__(self, inner, victim: str, marker: str):
        self.inner, self.victim, self.marker = inner, victim, marker
        self.threshold, self.note = inner.threshold, inner.note

    def predict(self, items, **options):
        if self.victim in items and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # the actor process dies mid-batch
        return self.inner.predict(items, **options)


class DyingSpec(PredictorSpec):
    def __init__(self, victim: str, marker: str, **fields):
        super().__init__(**fields)
        object.__setattr__(self, "victim", victim)
        object.__setattr__(self, "marker", marker)

    def build(self):
        return DyingPredictor(super().build(), self.victim, self.marker)


def test_ray_actor_pool_scores_like_one_process_each_input_once_and_survives_a_killed_actor(
        ray_cluster, workspace, reference, tmp_path):
    from anomclip_hf.serving.ray_engine import predict_with_ray, read_rows

    good = [str(p) for p in workspace.good]
    marker = tmp_path / "actor-killed"
    spec = DyingSpec(good[4], str(marker), base=str(workspace.base), category=str(workspace.widget))
    result = predict_with_ray(spec, good, str(tmp_path / "out"), actors=2, batch_size=2, root=str(workspace.images))
    assert marker.exists()  # an actor died holding the batch with good[4]; Ray restarted it and retried
    rows = read_rows(str(tmp_path / "out" / "ray"))
    assert rows["index"].tolist() == list(range(len(good)))  # each input exactly once
    assert rows["path"].tolist() == good and (rows["error"] == "").all()
    for path, score in zip(rows["path"], rows["image_score"]):
        assert abs(score - reference["scores"][path]) < 1e-6
    assert list(result.scores) == good and not result.failures
    merged = read_scores_csv(tmp_path / "out" / "scores.csv")
    assert list(merged) == good
    for path, row in merged.items():
        decision, normalized = expected_outcome(reference["scores"][path], reference["threshold"])
        assert row["decision"] == decision and float(row["normalized_score"]) == pytest.approx(normalized, abs=1e-6)
    overlays = sorted(p.relative_to(tmp_path / "out" / "overlays").as_posix()
                      for p in (tmp_path / "out" / "overlays").rglob("*.png"))
    assert overlays == sorted(Path(p).relative_to(workspace.images).as_posix() for p in good)
