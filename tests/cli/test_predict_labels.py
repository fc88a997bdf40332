"""predict --labels / --sensitivity, the range rule of --threshold on every command, and fit --epochs 0."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.model.embedded_base import embedded_demo_model
from anomclip_hf.training.inputs import add_reference_category


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A saved random base, a memory-only adapter, and a labelled folder: normal/ + two defect types."""
    root = tmp_path_factory.mktemp("labels")
    generate_mvtec_tree(root / "data", categories=("widget",), n_train=3, n_test_good=5, n_test_defect=3,
                        image_size=64, seed=7, defect_types=("blob", "scratch"))
    model = embedded_demo_model(seed=0)
    model.save_pretrained(root / "base")
    add_reference_category(model, "mvtec", str(root / "data"), "widget", 3, 0)
    model.save_category(str(root / "adapter"), "widget")
    test = root / "data" / "widget" / "test"
    shutil.copytree(test / "good", root / "set" / "normal")
    for defect in ("blob", "scratch"):
        shutil.copytree(test / defect, root / "set" / defect)
    return root


def _strict(text):
    return json.loads(text, parse_constant=lambda constant: pytest.fail(f"not JSON: {constant}"))


def _predict(root, output, *flags):
    return main(["predict", "--base", str(root / "base"), "--category", str(root / "adapter"),
                 "--images", str(root / "set"), "--output", str(output), "--quiet", *flags])


def _scores(output):
    with open(output / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = np.array([float(row["image_score"]) for row in rows])
    labels = np.array(["/normal/" not in row["path"].replace("\\", "/") for row in rows])
    return rows, scores, labels


def test_labels_folder_adds_metrics_equal_to_sklearn(labelled, tmp_path, capsys):
    assert _predict(labelled, tmp_path / "out", "--labels", str(labelled / "set")) == 0
    printed = capsys.readouterr().out
    assert "image AUROC" in printed and "TP " in printed
    metrics = _strict((tmp_path / "out" / "metrics.json").read_text())
    rows, scores, labels = _scores(tmp_path / "out")
    threshold = json.loads((labelled / "adapter" / "category.json").read_text())["decision_threshold"]
    assert metrics["labelled_images"] == len(rows) == 11 and metrics["anomalous"] == 6
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    at = metrics["at_threshold"]
    assert at["threshold"] == pytest.approx(threshold)
    tn, fp, fn, tp = confusion_matrix(labels, scores >= threshold, labels=[False, True]).ravel()
    assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (tp, fp, tn, fn)
    assert [row["decision"] == "anomalous" for row in rows] == list(scores >= threshold)
    assert sorted(metrics["per_defect"]) == ["blob", "scratch"]


def test_labels_csv_gives_the_same_numbers(labelled, tmp_path):
    assert _predict(labelled, tmp_path / "a", "--labels", str(labelled / "set")) == 0
    rows, _, labels = _scores(tmp_path / "a")
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for row, label in zip(rows, labels):
            writer.writerow([str(labelled / "set" / row["path"].split("set/", 1)[-1]),
                             "anomalous" if label else "normal"])
    assert _predict(labelled, tmp_path / "b", "--labels", str(table)) == 0
    first = _strict((tmp_path / "a" / "metrics.json").read_text())
    second = _strict((tmp_path / "b" / "metrics.json").read_text())
    for key in ("labelled_images", "image_auroc", "image_ap", "at_threshold"):
        assert first[key] == second[key]


def test_bad_labels_fail_before_the_model_loads(labelled, tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    assert _predict(labelled, tmp_path / "out", "--labels", str(tmp_path / "flat")) == 2
    assert "expected a normal/ (or good/) sub-folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,0\nb.png,maybe\n")
    assert _predict(labelled, tmp_path / "out", "--labels", str(bad)) == 2
    assert "line 2: label 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("sensitivity", [0.5, 0.8, 0.2])
def test_sensitivity_decides_at_its_threshold(labelled, tmp_path, sensitivity, capsys):
    stored = json.loads((labelled / "adapter" / "category.json").read_text())["decision_threshold"]
    assert _predict(labelled, tmp_path / "out", "--sensitivity", str(sensitivity)) == 0
    expected = 2 * stored * (1 - sensitivity)
    assert f"decision threshold {expected:.4f}" in capsys.readouterr().err
    rows, scores, _ = _scores(tmp_path / "out")
    assert [row["decision"] == "anomalous" for row in rows] == list(scores >= expected)


@pytest.mark.parametrize("command", ["predict", "serve"])
@pytest.mark.parametrize("value", ["-1", "0", "5", "nan"])
def test_command_line_thresholds_follow_the_stored_range(command, value, capsys):
    argv = {"predict": ["predict", "--base", "b", "--category", "c", "--images", "i", "--output", "o"],
            "serve": ["serve", "--base", "b", "--category", "c"]}[command]
    with pytest.raises(SystemExit) as done:
        main(argv + ["--threshold", value])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"anomclip {command}: error: argument --threshold: expected a number greater than 0 and at most 2 (scores "
        f"are in [0, 1]), got '{value}'")


@pytest.mark.parametrize("value", ["-0.1", "1.5", "x"])
def test_sensitivity_flag_is_a_number_from_0_to_1(value, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--base", "b", "--category", "c", "--images", "i", "--output", "o", "--sensitivity", value])
    assert "argument --sensitivity: expected a number from 0 to 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--no-train"]])
def test_fit_without_training_builds_memory_and_thresholds(labelled, tmp_path, flag, capsys):
    references = labelled / "data" / "widget" / "train" / "good"
    assert main(["fit", "--base", str(labelled / "base"), "--references", str(references), "--category", "widget",
                 "--output", str(tmp_path / "fit"), "--quiet", *flag]) == 0
    assert "no prompt training" in capsys.readouterr().out
    record = json.loads((tmp_path / "fit" / "adapter" / "category.json").read_text())
    assert record["learned_prompts"] is False and record["shots"] == 3
    assert record["training"]["epochs"] == 0
    assert 0 < record["decision_threshold"] <= 2 and record["threshold_estimate"]["method"].startswith("leave-one-out")


def test_serve_sensitivity_sets_each_category_threshold(labelled):
    from anomclip_hf.serving.server import ServeSpec

    stored = json.loads((labelled / "adapter" / "category.json").read_text())["decision_threshold"]
    spec = ServeSpec(base=str(labelled / "base"), categories=(str(labelled / "adapter"),), sensitivity=0.75)
    assert spec.load("cpu")["widget"].threshold == pytest.approx(2 * stored * 0.25)
    default = ServeSpec(base=str(labelled / "base"), categories=(str(labelled / "adapter"),)).load("cpu")
    assert default["widget"].threshold == stored
