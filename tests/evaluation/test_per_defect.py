"""`anomclip evaluate` on a labelled folder without masks: per-defect-type rows equal scikit-learn on the same
scores, results.json is strict JSON, the tables hold no NaN, and --no-progress draws no bars."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.evaluation.per_defect import per_defect_metrics
from anomclip_hf.inference.batch_scoring import score_images
from anomclip_hf.io.atomic_io import write_json
from anomclip_hf.model.embedded_base import embedded_demo_model


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_per_defect_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    types = ["good"] * 9 + ["crack"] * 5 + ["hole"] * 4 + ["stain/dark"] * 3
    scores = rng.uniform(0, 1, len(types))
    scores[-3:] = rng.uniform(0.5, 1, 3)
    rows = per_defect_metrics(scores, types, threshold=0.6)
    assert sorted(rows) == ["crack", "hole", "stain/dark"]
    normal = np.array(types) == "good"
    for defect, row in rows.items():
        chosen = np.array(types) == defect
        subset = normal | chosen
        assert row["images"] == chosen.sum()
        assert row["image_auroc"] == pytest.approx(roc_auc_score(chosen[subset], scores[subset]), abs=1e-12)
        assert row["image_ap"] == pytest.approx(average_precision_score(chosen[subset], scores[subset]), abs=1e-12)
        assert row["recall_at_stored_threshold"] == pytest.approx(np.mean(scores[chosen] >= 0.6))
    assert all(row["recall_at_stored_threshold"] is None for row in per_defect_metrics(scores, types, None).values())


def test_write_json_is_strict():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.json"
        write_json(str(path), {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32("nan"), "d": 2})
        assert _strict(path.read_text()) == {"a": None, "b": [None, None, 1.5], "c": None, "d": 2}


def test_evaluate_folder_without_masks(tmp_path, capsys):
    data = tmp_path / "data"
    generate_mvtec_tree(data, categories=("widget",), n_train=3, n_test_good=5, n_test_defect=3, image_size=64, seed=2)
    embedded_demo_model(seed=0).save_pretrained(tmp_path / "base")
    capsys.readouterr()  # the bar of save_pretrained above is not evaluate's
    test = data / "widget" / "test"
    output = tmp_path / "eval"
    assert main(["evaluate", "--base", str(tmp_path / "base"), "--dataset", "folder",
                 "--normal-dir", str(data / "widget" / "train" / "good"), "--normal-test-dir", str(test / "good"),
                 "--abnormal-dir", str(test), "--shots", "2", "--seeds", "0", "--no-train", "--no-progress",
                 "--output", str(output)]) == 0
    printed = capsys.readouterr()
    assert "%|" not in printed.err and "it/s" not in printed.err  # no tqdm bars
    assert printed.out.count("no masks") == 1 and "nan" not in printed.out.lower()
    results = _strict((output / "results.json").read_text())  # raises on a bare NaN / Infinity
    (cell,) = results["cells"]
    assert cell["metrics"]["pixel_auroc"] is None and cell["metrics"]["aupro"] is None
    assert "nan" not in (output / "results.md").read_text().lower()

    # the per-defect rows against scikit-learn on the adapter's own scores of the same images
    model = AnomCLIPModel.from_base(str(tmp_path / "base"))
    state = model.load_category(cell["adapter"])
    paths = sorted(str(p) for p in test.rglob("*.png"))
    scores = np.zeros(len(paths))
    for batch in score_images(model, paths, category=state.name, progress=False):
        scores[batch.indices] = batch.image_scores
    types = np.array([Path(p).parent.name for p in paths])
    normal = types == "good"
    per_defect = cell["metrics"]["per_defect"]
    assert sorted(per_defect) == ["blob", "missing", "scratch"]
    threshold = state.metadata["decision_threshold"]
    for defect, row in per_defect.items():
        chosen = types == defect
        subset = normal | chosen
        assert row["images"] == 3
        assert row["image_auroc"] == pytest.approx(roc_auc_score(chosen[subset], scores[subset]), abs=1e-9)
        assert row["image_ap"] == pytest.approx(average_precision_score(chosen[subset], scores[subset]), abs=1e-9)
        assert row["recall_at_stored_threshold"] == pytest.approx(np.mean(scores[chosen] >= threshold))
    summary = {(r["defect_type"], r["shots"]): r for r in results["per_defect"]}
    assert summary[("blob", 2)]["image_auroc"]["mean"] == pytest.approx(per_defect["blob"]["image_auroc"])
    csv_rows = (output / "results_per_defect.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("dataset,category,shots,seed,defect_type")
