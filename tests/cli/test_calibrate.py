"""`anomclip calibrate` on a generated category: each rule moves the stored threshold to a value that does what
the rule promises on that set, recomputed here from the scores (numpy / scikit-learn), and the old thresholds
stay in the record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import f1_score

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.inference.batch_scoring import score_images
from anomclip_hf.model.embedded_base import embedded_demo_model
from anomclip_hf.training.inputs import add_reference_category

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def calibration_set(tmp_path_factory):
    """A saved random base, a memory-only adapter of 3 references (its leave-one-out threshold stored), and the
    scores of the calibration images (test/good normal; blob, scratch, missing anomalous)."""
    root = tmp_path_factory.mktemp("calibrate")
    generate_mvtec_tree(root / "data", categories=("widget",), n_train=3, n_test_good=8, n_test_defect=4,
                        image_size=IMAGE_SIZE, seed=5)
    model = embedded_demo_model(seed=0)
    model.save_pretrained(root / "base")
    add_reference_category(model, "mvtec", str(root / "data"), "widget", 3, 0)
    model.save_category(str(root / "adapter"), "widget")
    test = root / "data" / "widget" / "test"
    normals = sorted(str(p) for p in (test / "good").glob("*.png"))
    abnormal = sorted(str(p) for p in test.rglob("*.png") if p.parent.name != "good")
    scores = {}
    for batch in score_images(model, normals + abnormal, batch_size=8, category="widget", progress=False):
        for index, score in zip(batch.indices, batch.image_scores):
            scores[(normals + abnormal)[index]] = float(score)
    return {"root": root, "normal": np.array([scores[p] for p in normals]),
            "abnormal": np.array([scores[p] for p in abnormal]),
            "stored": model.get_category("widget").metadata["decision_threshold"]}


def _calibrate(tmp_path, data, *flags, abnormal=True):
    adapter = tmp_path / "adapter"
    shutil.copytree(data["root"] / "adapter", adapter)
    test = data["root"] / "data" / "widget" / "test"
    argv = ["calibrate", "--base", str(data["root"] / "base"), "--category", str(adapter),
            "--normal-dir", str(test / "good"), "--no-progress", *flags]
    if abnormal:
        argv += ["--abnormal-dir", str(test)]  # test/good inside it counts as normal only
    assert main(argv) == 0
    return adapter, json.loads((adapter / "category.json").read_text())


def _rates(data, threshold):
    """Recall and false-alarm rate at `threshold`, counted here (score >= threshold is anomalous)."""
    return float(np.mean(data["abnormal"] >= threshold)), float(np.mean(data["normal"] >= threshold))


@pytest.mark.parametrize("target", [0.5, 0.75, 1.0])
def test_recall_target_gives_the_highest_threshold_meeting_it(calibration_set, tmp_path, target, capsys):
    _, record = _calibrate(tmp_path, calibration_set, "--target", f"recall={target}")
    threshold = record["decision_threshold"]
    recall, _ = _rates(calibration_set, threshold)
    assert recall >= target
    # highest: the next anomalous score above the threshold would miss the target
    above = calibration_set["abnormal"][calibration_set["abnormal"] > threshold]
    if above.size:
        assert _rates(calibration_set, above.min() + 1e-9)[0] < target
    assert record["threshold_estimate"]["rule"] == {"name": "recall", "target": target}
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and f"{recall:.4f}" in printed


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_false_alarm_target_from_normal_images_alone(calibration_set, tmp_path, rate):
    _, record = _calibrate(tmp_path, calibration_set, "--target", f"false-alarm={rate}", abnormal=False)
    threshold = record["decision_threshold"]
    assert _rates(calibration_set, threshold)[1] <= rate
    # lowest: the highest normal score below it would add a false alarm past the cap
    below = calibration_set["normal"][calibration_set["normal"] < threshold]
    if below.size:
        assert _rates(calibration_set, below.max())[1] > rate
    assert record["threshold_estimate"]["data"]["abnormal_images"] == 0


def test_f1_target_reaches_the_best_f1_of_any_threshold(calibration_set, tmp_path):
    _, record = _calibrate(tmp_path, calibration_set)  # f1 is the default with --abnormal-dir
    scores = np.concatenate([calibration_set["normal"], calibration_set["abnormal"]])
    labels = np.r_[np.zeros(calibration_set["normal"].size), np.ones(calibration_set["abnormal"].size)]
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1_score(labels, scores >= record["decision_threshold"]) == pytest.approx(best, abs=1e-12)


def test_percentile_rule_and_history(calibration_set, tmp_path):
    adapter, record = _calibrate(tmp_path, calibration_set, "--percentile", "90", "--factor", "1.05",
                                 abnormal=False)
    expected = 1.05 * np.percentile(calibration_set["normal"], 90)
    assert record["decision_threshold"] == pytest.approx(expected, rel=1e-6)
    estimate = record["threshold_estimate"]
    assert estimate["rule"] == {"name": "percentile", "percentile": 90.0, "factor": 1.05}
    card = (adapter / "README.md").read_text()
    assert f"{record['decision_threshold']:.4f} (score >= threshold is anomalous; calibrated" in card
    (previous,) = estimate["history"]
    assert previous["image"] == pytest.approx(calibration_set["stored"])
    assert previous["rule"]["name"] == "leave-one-out"
    # a second calibration (leave-one-out again, from the stored reference scores) keeps both earlier ones
    assert main(["calibrate", "--base", str(calibration_set["root"] / "base"), "--category", str(adapter),
                 "--rule", "leave-one-out", "--factor", "1.1"]) == 0
    again = json.loads((adapter / "category.json").read_text())
    assert again["decision_threshold"] == pytest.approx(calibration_set["stored"], rel=1e-6)  # fit's rule
    assert [h["rule"]["name"] for h in again["threshold_estimate"]["history"]] == ["percentile", "leave-one-out"]
    # the adapter still loads, with the new threshold
    model = AnomCLIPModel.from_base(str(calibration_set["root"] / "base"))
    assert model.load_category(str(adapter)).metadata["decision_threshold"] == again["decision_threshold"]


def test_dry_run_writes_nothing(calibration_set, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(calibration_set["root"] / "adapter", adapter)
    before = (adapter / "category.json").read_bytes()
    assert main(["calibrate", "--base", str(calibration_set["root"] / "base"), "--category", str(adapter),
                 "--rule", "leave-one-out", "--factor", "1.3", "--dry-run"]) == 0
    assert (adapter / "category.json").read_bytes() == before


@pytest.mark.parametrize("flags, message", [
    (["--target", "recall=1.5"], "recall=1.5; expected a rate greater than 0 and at most 1"),
    (["--target", "precision=0.9"], "expected f1, recall=R or false-alarm=A"),
    (["--target", "f1"], "--target f1 needs --abnormal-dir"),
    (["--rule", "percentile", "--factor", "0.5"], "factor=0.5; expected a number >= 1"),
    (["--rule", "percentile", "--percentile", "95", "--factor", "30"], "a stored threshold must be a number greater "
                                                                        "than 0 and at most 2"),
])
def test_bad_rules_are_refused_and_nothing_is_written(calibration_set, tmp_path, flags, message, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(calibration_set["root"] / "adapter", adapter)
    before = (adapter / "category.json").read_bytes()
    test = calibration_set["root"] / "data" / "widget" / "test"
    assert main(["calibrate", "--base", str(calibration_set["root"] / "base"), "--category", str(adapter),
                 "--normal-dir", str(test / "good"), "--no-progress", *flags]) == 2
    assert message in capsys.readouterr().err
    assert (adapter / "category.json").read_bytes() == before
