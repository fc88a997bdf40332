"""accelerate shard plans notice changed state: a replaced input (same name) or an adapter re-fitted at the same
path starts the run afresh (new scores, the new threshold); an unchanged rerun reuses the finished shards. A new
plan deletes only what earlier runs wrote under shards/. (One process, in-process: the plan logic is the same for N.)"""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
from PIL import Image

from anomclip_hf import AnomCLIPModel
from anomclip_hf.inference.predictor import Predictor, PredictorSpec
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

pytest.importorskip("accelerate")

from anomclip_hf.serving.shards import predict_sharded  # noqa: E402


def _image(seed: int, size=(30, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _fit(model, root, first: int) -> None:
    """(Re-)fit category widget from references first.. first+2 and save it at root/adapter."""
    if "widget" in model.categories:
        model.remove_category("widget")
    references = [_image(first + seed) for seed in range(3)]
    model.add_category("widget", reference_images=references, seed=1)
    model.estimate_thresholds(references, category="widget")
    model.save_category(str(root / "adapter"), "widget")


@pytest.fixture
def setup(tmp_path, tiny_clip):
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    _fit(model, tmp_path, first=0)
    model.save_pretrained(tmp_path / "base")
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for seed in range(3):
        _image(100 + seed, (34, 30)).save(images / f"{seed}.png")
        paths.append(str(images / f"{seed}.png"))
    return model, tmp_path, paths


def _run(root, paths):
    spec = PredictorSpec(base=str(root / "base"), category=str(root / "adapter"))
    return predict_sharded(spec.build, paths, str(root / "out"), settings=spec.settings(), progress=False)


def _fresh_scores(root, paths):
    predictor = Predictor.from_pretrained(str(root / "base"), str(root / "adapter"))
    return {r.source: r.score for r in predictor.predict(paths)}, predictor.threshold


def _csv_scores(root):
    with open(root / "out" / "scores.csv", newline="", encoding="utf-8") as handle:
        return {row["path"]: float(row["image_score"]) for row in csv.DictReader(handle)}


def test_unchanged_inputs_reuse_the_shards_and_a_replaced_input_does_not(setup):
    _, root, paths = setup
    first = _run(root, paths)
    assert first.skipped_shards == []
    again = _run(root, paths)
    assert again.skipped_shards == ["00000-of-00001"] and again.scores == first.scores
    _image(999, (34, 30)).save(paths[1])  # replaced under the same name
    after = _run(root, paths)
    assert after.skipped_shards == []
    expected, _ = _fresh_scores(root, paths)
    for path in paths:
        assert _csv_scores(root)[path] == pytest.approx(expected[path], abs=1e-6)
    assert after.scores[paths[1]] != pytest.approx(first.scores[paths[1]], abs=1e-6)


def test_an_adapter_refitted_at_the_same_path_starts_afresh_with_its_threshold(setup):
    model, root, paths = setup
    first = _run(root, paths)
    _fit(model, root, first=40)  # other references, the same folder
    after = _run(root, paths)
    assert after.skipped_shards == []
    expected, threshold = _fresh_scores(root, paths)
    assert after.threshold == pytest.approx(threshold) and after.threshold != pytest.approx(first.threshold)
    for path in paths:
        assert after.scores[path] == pytest.approx(expected[path], abs=1e-6)


def test_a_new_plan_removes_only_what_runs_wrote_under_shards(setup):
    _, root, paths = setup
    _run(root, paths)
    shards = root / "out" / "shards"
    (shards / "notes.txt").write_text("mine")
    (shards / "mine").mkdir()
    (shards / "mine" / "keep.csv").write_text("a,b\n")
    (shards / "00003-of-00007").mkdir()  # looks like a shard, but holds a file no run wrote
    (shards / "00003-of-00007" / "notes.md").write_text("mine too")
    _image(5, (34, 30)).save(paths[0])
    assert _run(root, paths).skipped_shards == []
    assert (shards / "notes.txt").read_text() == "mine" and (shards / "mine" / "keep.csv").exists()
    assert (shards / "00003-of-00007" / "notes.md").read_text() == "mine too"
    assert json.loads((shards / "plan.json").read_text())["processes"] == 1


def test_the_plan_reads_each_input_and_the_adapter_as_they_are_now(setup):
    from anomclip_hf.serving.merge import plan_hash, source_stamp

    _, root, paths = setup
    before = plan_hash(paths, category=str(root / "adapter"))
    assert plan_hash(paths, category=str(root / "adapter")) == before
    stamp = source_stamp(root / "adapter")
    record = json.loads((root / "adapter" / "category.json").read_text())
    record["decision_threshold"] = 0.4
    (root / "adapter" / "category.json").write_text(json.dumps(record))
    assert source_stamp(root / "adapter") != stamp
    assert plan_hash(paths, category=str(root / "adapter")) != before
    assert source_stamp(root / "no-such-folder") is None  # a Hub id: its revision is a setting
