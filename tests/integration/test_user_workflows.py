"""The user path: demo, fit + predict on folders, overlays, leave-one-out thresholds, the pipeline."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.inference.visualization import (
    anomaly_panel,
    jet,
    mask_contour,
    overlay_layout,
)
from anomclip_hf.io.image_io import load_image
from anomclip_hf.model.embedded_base import embedded_demo_model
from anomclip_hf.model.processing_anomclip import preprocess_images
from anomclip_hf.model.thresholds import DEFAULT_MARGIN

IMAGE_SIZE = 112


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A generated category, the embedded random base saved as a folder, and a fitted adapter (via the CLI)."""
    root = tmp_path_factory.mktemp("workflow")
    generate_mvtec_tree(root / "data", categories=("widget",), n_train=4, n_test_good=4, n_test_defect=3,
                        image_size=IMAGE_SIZE, seed=3)
    embedded_demo_model(seed=0).save_pretrained(root / "base")
    references = root / "data" / "widget" / "train" / "good"
    phrases = root / "phrases.txt"
    phrases.write_text("# extra phrases\n{} with a green spot\n\n")
    assert main(["fit", "--base", str(root / "base"), "--references", str(references), "--category", "widget",
                 "--output", str(root / "fit"), "--epochs", "2", "--phrases", str(phrases)]) == 0
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_demo_subprocess_offline_writes_promised_files(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "anomclip_hf.cli", "demo", "--quiet", "--epochs", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot be reached" in result.stdout and "pipeline check" in result.stdout
    (output,) = [p for p in tmp_path.iterdir() if p.name.startswith("anomclip-demo-")]  # a new folder under cwd
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["pipeline_check"] is True and "PIPELINE CHECK" in metrics["note"]
    rows = _rows(output / "scores.csv")
    assert len(rows) == metrics["test_images"] == 18
    assert all("PIPELINE CHECK" in row["note"] for row in rows)
    assert {row["decision"] for row in rows} <= {"anomalous", "normal"}
    # the stored threshold's performance comes first, counted independently from scores.csv
    assert list(metrics)[:4] == ["stored_threshold", "stored_threshold_f1", "stored_threshold_precision",
                                 "stored_threshold_recall"]
    assert metrics["stored_threshold"] == metrics["decision_threshold"]
    hits = sum(r["decision"] == "anomalous" and r["label"] != "normal" for r in rows)
    flagged, positives = sum(r["decision"] == "anomalous" for r in rows), sum(r["label"] != "normal" for r in rows)
    assert metrics["stored_threshold_precision"] == pytest.approx(hits / flagged if flagged else 0.0)
    assert metrics["stored_threshold_recall"] == pytest.approx(hits / positives)
    overlays = sorted((output / "overlays").rglob("*.png"))
    assert len(overlays) == 18
    for picture in overlays:
        with Image.open(picture) as image:
            image.load()
            assert image.size == overlay_layout((IMAGE_SIZE, IMAGE_SIZE), 2).size
    assert (output / "adapter" / "category.json").is_file()
    assert str(output.name) in result.stdout


def test_fit_stores_leave_one_out_threshold_above_every_reference(workspace):
    model = AnomCLIPModel.from_base(str(workspace / "base"))
    state = model.load_category(str(workspace / "fit" / "adapter"))
    record = json.loads((workspace / "fit" / "adapter" / "category.json").read_text())
    assert record["phrases"][-1] == "{} with a green spot"
    threshold = record["decision_threshold"]
    assert threshold == state.metadata["decision_threshold"] and record["pixel_threshold"] > 0
    # Independent recomputation: re-encode the other references from their files as the memory bank of a
    # second copy of the trained category, then score the held-out one.
    references = sorted(str(p) for p in (workspace / "data" / "widget" / "train" / "good").iterdir())
    assert [os.path.basename(p) for p in references] == sorted(os.path.basename(p) for p in record["reference_files"])
    loo_scores = []
    for index, held_out in enumerate(references):
        other = model.load_category(str(workspace / "fit" / "adapter"), name=f"loo{index}")
        other.memory_bank = model.build_memory_bank([load_image(p) for i, p in enumerate(references) if i != index])
        with torch.no_grad():
            out = model(preprocess_images([load_image(held_out)], model.config.image_size), category=other.name)
        loo_scores.append(float(out.image_scores[0]))
    np.testing.assert_allclose(sorted(loo_scores), sorted(record["threshold_estimate"]["leave_one_out_image_scores"]),
                               rtol=1e-5, atol=1e-7)
    assert record["threshold_estimate"]["margin"] == DEFAULT_MARGIN
    card = (workspace / "fit" / "adapter" / "README.md").read_text()
    assert f"| decision threshold | {threshold:.4f} (score >= threshold is anomalous; leave-one-out" in card
    assert threshold >= (1 + DEFAULT_MARGIN) * max(loo_scores) * (1 - 1e-6)
    assert all(threshold > score for score in loo_scores)


def test_predict_scores_defects_above_normals_with_overlays(workspace, tmp_path, capsys):
    test_dir = workspace / "data" / "widget" / "test"
    code = main(["predict", "--base", str(workspace / "base"), "--category", str(workspace / "fit" / "adapter"),
                 "--images", str(test_dir), "--output", str(tmp_path), "--batch-size", "4", "--quiet",
                 "--overlays", "all"])
    assert code == 0
    rows = _rows(tmp_path / "scores.csv")
    assert len(rows) == 4 + 3 * 3  # recursive: good + three defect types
    normal = [float(r["image_score"]) for r in rows if "/good/" in r["path"]]
    defect = [float(r["image_score"]) for r in rows if "/good/" not in r["path"]]
    assert np.mean(defect) > np.mean(normal)
    threshold = json.loads((workspace / "fit" / "adapter" / "category.json").read_text())["decision_threshold"]
    for row in rows:
        assert row["decision"] == ("anomalous" if float(row["image_score"]) >= threshold else "normal")
    for row in rows:
        relative = os.path.relpath(row["path"], test_dir)
        with Image.open(tmp_path / "overlays" / relative) as picture:
            assert picture.size == overlay_layout((IMAGE_SIZE, IMAGE_SIZE), 2).size  # + PIPELINE CHECK
    assert "13 images scored" in capsys.readouterr().out
    # --threshold overrides the stored one
    assert main(["predict", "--base", str(workspace / "base"), "--category", str(workspace / "fit" / "adapter"),
                 "--images", str(test_dir / "good"), "--output", str(tmp_path / "t"), "--threshold", "1e-9",
                 "--quiet"]) == 0
    assert {row["decision"] for row in _rows(tmp_path / "t" / "scores.csv")} == {"anomalous"}


def test_predict_reports_bad_files_and_scores_the_rest(workspace, tmp_path, capsys):
    images = tmp_path / "mixed"
    (images / "nested" / "empty").mkdir(parents=True)
    good = sorted((workspace / "data" / "widget" / "test" / "good").iterdir())
    Image.open(good[0]).save(images / "ok.png")
    Image.open(good[1]).convert("L").save(images / "nested" / "grey.jpg")
    data = (good[2]).read_bytes()
    (images / "corrupt.png").write_bytes(data[: len(data) // 3])
    (images / "notes.txt").write_text("not an image")
    args = ["predict", "--base", str(workspace / "base"), "--category", str(workspace / "fit" / "adapter"),
            "--images", str(images), "--output", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "notes.txt" in err
    scored = {os.path.relpath(r["path"], images) for r in _rows(tmp_path / "out" / "scores.csv")}
    assert scored == {"ok.png", os.path.join("nested", "grey.jpg")}
    errors = {os.path.basename(r["path"]): r["error"] for r in _rows(tmp_path / "out" / "errors.csv")}
    assert set(errors) == {"corrupt.png", "notes.txt"} and "cannot read image" in errors["corrupt.png"]
    assert not (tmp_path / "out" / "overlays" / "corrupt.png").exists()

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "broken.png").write_bytes(data[:40])
    assert main(args[:5] + ["--images", str(only_bad), "--output", str(tmp_path / "out2"), "--quiet"]) == 1
    assert "0 images scored" in capsys.readouterr().out

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args[:5] + ["--images", str(empty), "--output", str(tmp_path / "out3"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no image files" in err and str(empty) in err and len(err.strip().splitlines()) == 1


def test_pipeline_matches_the_model(workspace):
    model = AnomCLIPModel.from_base(str(workspace / "base"))
    files = sorted(str(p) for p in (workspace / "data" / "widget" / "test").rglob("*.png"))[:5]
    detector = pipeline("image-anomaly-detection", model=model, category=str(workspace / "fit" / "adapter"))
    results = detector(files, batch_size=2)
    assert len(results) == 5
    with torch.no_grad():
        direct = model(preprocess_images([load_image(f) for f in files], model.config.image_size), category="widget")
    np.testing.assert_allclose([r["score"] for r in results], direct.image_scores.numpy(), rtol=0, atol=1e-6)
    for result, expected in zip(results, direct.anomaly_maps.numpy()):
        assert result["anomaly_map"].shape == (IMAGE_SIZE, IMAGE_SIZE)
        np.testing.assert_allclose(result["anomaly_map"], expected, rtol=0, atol=1e-6)
        assert result["decision"] == ("anomalous" if result["score"] >= result["threshold"] else "normal")
    # a folder path loads once, a loaded name is used as is; threshold override per call
    one = detector(files[0], threshold=1e-9)
    assert one["decision"] == "anomalous" and one["threshold"] == 1e-9
    by_name = pipeline("image-anomaly-detection", model=model, category="widget")(files[0])
    assert by_name["score"] == pytest.approx(results[0]["score"], rel=1e-6)


def test_pipeline_loads_base_folder(workspace):
    detector = pipeline("image-anomaly-detection", model=str(workspace / "base"),
                        category=str(workspace / "fit" / "adapter"))
    assert isinstance(detector.model, AnomCLIPModel)
    assert 0.0 <= detector(str(next((workspace / "data" / "widget" / "test" / "good").iterdir())))["score"] <= 1.0


def test_overlay_panel_draws_contours_and_jet():
    np.testing.assert_array_equal(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    contour = mask_contour(mask, thickness=1)
    assert contour.sum() == 36 and contour[5, 5] and not contour[10, 10]
    image = Image.new("RGB", (40, 40), (0, 0, 0))
    heat = np.zeros((20, 20), np.float32)
    heat[0:10, 0:10] = 1.0
    panel = np.asarray(anomaly_panel(image, heat, score=0.7, threshold=0.5, pixel_threshold=0.5, ground_truth=mask))
    layout = overlay_layout((40, 40), 1)
    band = layout.header_height + layout.title_height
    assert panel.shape == (40 + band, 120 + layout.bar_width, 3)
    first, third = panel[band:, :40], panel[band:, 80:]
    assert (first == (255, 255, 0)).all(axis=-1).sum() > 0  # ground-truth contour in yellow
    red = (third == (255, 0, 0)).all(axis=-1)
    assert red.sum() > 0 and not red[30:, 30:].any()  # predicted contour around the hot corner only
    assert (panel[:band] != 255).any()  # the label is drawn


@pytest.mark.parametrize("command", ["demo", "fit", "predict", "evaluate", "convert-open-clip", "push"])
def test_every_subcommand_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: anomclip {command} ")
    examples = out.split("examples:\n", 1)[1]
    assert examples.strip() and all(line.startswith(f"  anomclip {command}") for line in examples.splitlines()
                                    if line.strip()), command


def test_bad_input_is_one_sentence_and_nonzero(tmp_path, capsys):
    code = main(["fit", "--base", str(tmp_path / "missing_base"), "--references", str(tmp_path),
                 "--category", "x", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("anomclip fit: error:") and "Traceback" not in err


def test_python_api_thresholds_round_trip(tmp_path):
    model = embedded_demo_model(seed=1)
    generate_mvtec_tree(tmp_path / "data", categories=("gizmo",), n_train=3, n_test_good=1, n_test_defect=1,
                        image_size=IMAGE_SIZE, seed=5)
    references = [load_image(p) for p in sorted((tmp_path / "data" / "gizmo" / "train" / "good").iterdir())]
    model.add_category("gizmo", reference_images=references)
    estimate = model.estimate_thresholds(references, margin=0.25)
    assert len(estimate.leave_one_out_image_scores) == 3
    assert estimate.image == pytest.approx(1.25 * max(estimate.leave_one_out_image_scores))
    assert estimate.pixel == pytest.approx(1.25 * max(estimate.leave_one_out_pixel_maxima))
    # the memory bank is restored: each reference scores ~0 against the full memory
    with torch.no_grad():
        own = model(preprocess_images(references, model.config.image_size))
    assert float(own.image_scores.max()) < 1e-5 < min(estimate.leave_one_out_image_scores)
    model.save_category(tmp_path / "gizmo")
    fresh = embedded_demo_model(seed=1)
    state = fresh.load_category(str(tmp_path / "gizmo"))
    assert state.metadata["decision_threshold"] == pytest.approx(estimate.image)
    assert state.metadata["threshold_estimate"]["margin"] == 0.25
    model.add_category("single", reference_images=references[:1])
    with pytest.raises(ValueError, match="at least 2"):
        model.estimate_thresholds(references[:1], category="single")


@pytest.mark.parametrize("name", ["../x", "a/b", "has space", "dotted.name", ""])
def test_add_category_refuses_unsafe_names(tiny_model, name):
    with pytest.raises(ValueError, match="category name"):
        tiny_model.add_category(name)
    assert name not in tiny_model.categories


def test_predict_device_and_autocast_options(workspace, tmp_path):
    from anomclip_hf.cli import resolve_device
    from anomclip_hf.model.precision import resolve_precision

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("bf16", "cpu").autocast_dtype == torch.bfloat16
    assert resolve_precision("none", "cpu").autocast_dtype is None  # --autocast none, the flag's older spelling
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    else:
        assert resolve_device("auto").type in ("cuda", "mps")
    images = workspace / "data" / "widget" / "test" / "good"
    base = ["predict", "--base", str(workspace / "base"), "--category", str(workspace / "fit" / "adapter"),
            "--images", str(images), "--device", "cpu", "--quiet"]
    assert main(base + ["--output", str(tmp_path / "fp32")]) == 0
    assert main(base + ["--output", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    full = [float(r["image_score"]) for r in _rows(tmp_path / "fp32" / "scores.csv")]
    low = [float(r["image_score"]) for r in _rows(tmp_path / "bf16" / "scores.csv")]
    # bf16 keeps about 3 significant digits in the vision tower; scores stay float32 and close (measured 1.3e-4)
    assert low != full and np.allclose(low, full, rtol=0, atol=2e-3)
