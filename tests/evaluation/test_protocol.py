"""`anomclip evaluate`: the protocol on a generated two-category data set with the tiny model."""

import csv
import json

import pytest

from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.evaluation.tables import METRICS


@pytest.fixture
def setup(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "base")
    generate_mvtec_tree(tmp_path / "data", categories=("widget", "gadget"), n_train=5, n_test_good=3,
                        n_test_defect=2, image_size=48, seed=0)
    return tmp_path


def _evaluate(root, *extra):
    return main(["evaluate", "--base", str(root / "base"), "--dataset", "mvtec", "--data-root", str(root / "data"),
                 "--shots", "1", "2", "--seeds", "0", "1", "--output", str(root / "out"), "--epochs", "2",
                 "--resolution", "40", "--no-progress", *extra])


def test_evaluate_writes_tables_and_reuses_finished_cells(setup):
    assert _evaluate(setup) == 0
    out = setup / "out"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["category"], r["shots"], r["seed"]) for r in rows] == [
        (c, k, s) for c in ("gadget", "widget") for k in ("1", "2") for s in ("0", "1")]
    assert all(r["source"] == "trained" and r["resolution"] == "40" for r in rows)
    for row in rows:
        for key, _ in METRICS:
            assert 0.0 <= float(row[key]) <= 1.0
    # thresholds: the F1-max one always; the stored leave-one-out one only with 2+ references
    for row in rows:
        assert float(row["image_f1_threshold"]) > 0
        record = json.loads((out / "adapters" / "mvtec" / row["category"] / f"{row['shots']}shot" / f"seed{row['seed']}"
                             / "adapter" / "category.json").read_text())
        if row["shots"] == "1":
            assert row["stored_threshold"] == "" and record["decision_threshold"] is None
        else:
            assert float(row["stored_threshold"]) == pytest.approx(record["decision_threshold"], abs=1e-6)
            assert 0.0 <= float(row["stored_threshold_f1"]) <= 1.0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["resolution"] == 40 and results["shots"] == [1, 2]
    table = results["tables"]["image_auroc"]
    assert set(table) == {"gadget", "widget", "mean"} and set(table["mean"]) == {"1", "2"}
    cells = [r for r in rows if r["category"] == "widget" and r["shots"] == "2"]
    expected = sum(float(r["image_auroc"]) for r in cells) / 2
    assert table["widget"]["2"]["mean"] == pytest.approx(expected, abs=1e-6)
    markdown = (out / "results.md").read_text()
    assert "| category | 1-shot | 2-shot |" in markdown and "| **mean** |" in markdown and "40x40" in markdown
    # every cell trained an adapter whose category.json records its shots
    adapter = out / "adapters" / "mvtec" / "widget" / "2shot" / "seed1" / "adapter" / "category.json"
    assert json.loads(adapter.read_text())["shots"] == 2
    card = (adapter.parent / "README.md").read_text()
    measured = [float(r["image_auroc"]) for r in rows if r["category"] == "widget" and r["shots"] == "2"
                and r["seed"] == "1"][0]
    assert "model-index:" in card and f"value: {measured:.4f}" in card

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert _evaluate(setup) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    again = json.loads((out / "results.json").read_text())
    assert all(cell.get("reused") for cell in again["cells"])
    assert again["tables"] == results["tables"]


def test_changed_settings_recompute_cells_and_existing_adapters_are_loaded(setup):
    assert _evaluate(setup) == 0
    assert _evaluate(setup, "--pixel-mode", "binned") == 0
    results = json.loads((setup / "out" / "results.json").read_text())
    assert results["settings"]["pixel_mode"] == "binned"
    assert {cell["source"] for cell in results["cells"]} == {"loaded"}
    assert not any(cell.get("reused") for cell in results["cells"])
