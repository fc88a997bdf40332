"""The first hour of a new user: a fast CLI, honest labels on a random base, errors naming the flag,
single-file predict, normalised scores, maps/masks, bounded overlays and a labelled folder data set."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.hub.model_card import render_base_card
from anomclip_hf.inference.visualization import MAX_SIDE, anomaly_panel, overlay_layout
from anomclip_hf.io.labels import PIPELINE_CHECK_NOTE
from anomclip_hf.model.embedded_base import embedded_demo_model
from anomclip_hf.model.thresholds import normalized_score

IMAGE_SIZE = 112


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The demo's random base saved as a folder, a generated category and an adapter fitted with the CLI."""
    root = tmp_path_factory.mktemp("first_hour")
    generate_mvtec_tree(root / "data", categories=("widget",), n_train=4, n_test_good=3, n_test_defect=2,
                        image_size=IMAGE_SIZE, seed=5)
    embedded_demo_model(seed=0).save_pretrained(root / "base")
    assert main(["fit", "--base", str(root / "base"), "--references", str(root / "data" / "widget" / "train" / "good"),
                 "--category", "widget", "--output", str(root / "fit"), "--epochs", "2", "--quiet"]) == 0
    return root


# ----------------------------------------------------------------------------------------- lazy CLI
def test_cli_help_loads_neither_torch_nor_transformers():
    code = ("import sys; from anomclip_hf.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    # argument errors too: argparse exits before any command runs
    error = subprocess.run([sys.executable, "-X", "importtime", "-m", "anomclip_hf.cli", "predict", "--base", "x"],
                           capture_output=True, text=True)
    assert error.returncode == 2 and "--category" in error.stderr
    assert not [line for line in error.stderr.splitlines() if line.rstrip().endswith((" torch", " transformers"))]


def test_package_names_load_on_use_and_register_auto_classes_and_pipeline():
    code = ("import sys, anomclip_hf; assert 'torch' not in sys.modules; "
            "from anomclip_hf import AnomCLIPModel; "
            "from transformers import AutoConfig, AutoModel; from transformers.pipelines import PIPELINE_REGISTRY; "
            "from anomclip_hf import AnomCLIPConfig; "
            "assert AutoModel._model_mapping[AnomCLIPConfig] is AnomCLIPModel; "
            "assert 'image-anomaly-detection' in PIPELINE_REGISTRY.get_supported_tasks(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("order", ["anomclip_first", "transformers_first"])
def test_a_public_name_registers_auto_classes_and_the_pipeline(tmp_path, tiny_model, order):
    # The contract: `import anomclip_hf` is cheap (no torch); the first public name used registers AnomCLIP with
    # transformers' own entry points, whichever of the two was imported first.
    tiny_model.save_pretrained(tmp_path / "base")
    first = "import anomclip_hf, sys; assert 'torch' not in sys.modules; from anomclip_hf import AnomCLIPConfig"
    second = "import transformers.pipelines"
    if order == "transformers_first":
        first, second = "import transformers.pipelines", "from anomclip_hf import AnomCLIPConfig"
    code = (f"{first}\n{second}\nfrom transformers import AutoConfig, AutoModel, pipeline\n"
            f"model = AutoModel.from_pretrained({str(tmp_path / 'base')!r})\n"
            f"config = AutoConfig.from_pretrained({str(tmp_path / 'base')!r})\n"
            "from transformers.pipelines import PIPELINE_REGISTRY\n"
            "print(type(model).__name__, type(config).__name__, "
            "'image-anomaly-detection' in PIPELINE_REGISTRY.get_supported_tasks())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["AnomCLIPModel", "AnomCLIPConfig", "True"]


# ----------------------------------------------------------------------------------------- labels
def test_random_base_labels_every_output(space, tmp_path):
    assert json.loads((space / "base" / "config.json").read_text())["random_weights"] is True
    adapter = space / "fit" / "adapter"
    assert json.loads((adapter / "category.json").read_text())["base_model"]["random_weights"] is True
    assert PIPELINE_CHECK_NOTE in (adapter / "README.md").read_text()
    assert json.loads((space / "fit" / "summary.json").read_text())["note"] == PIPELINE_CHECK_NOTE
    # predict: every row and every overlay (drawn, and in the PNG's text chunk)
    out = tmp_path / "predict"
    assert main(["predict", "--base", str(space / "base"), "--category", str(adapter), "--images",
                 str(space / "data" / "widget" / "test"), "--output", str(out), "--quiet", "--overlays", "all"]) == 0
    rows = _rows(out / "scores.csv")
    assert rows and all(row["note"] == PIPELINE_CHECK_NOTE for row in rows)
    overlays = sorted((out / "overlays").rglob("*.png"))
    assert len(overlays) == len(rows)
    for path in overlays:
        with Image.open(path) as picture:
            assert picture.text["note"] == PIPELINE_CHECK_NOTE
    # evaluate: results.md, results.json and results.csv
    evaluation = tmp_path / "eval"
    assert main(["evaluate", "--base", str(space / "base"), "--dataset", "mvtec", "--data-root",
                 str(space / "data"), "--shots", "2", "--seeds", "0", "--no-train", "--output", str(evaluation),
                 "--resolution", "56"]) == 0
    assert PIPELINE_CHECK_NOTE in (evaluation / "results.md").read_text()
    results = json.loads((evaluation / "results.json").read_text())
    assert results["pipeline_check"] is True and results["note"] == PIPELINE_CHECK_NOTE
    assert all(row["note"] == PIPELINE_CHECK_NOTE for row in _rows(evaluation / "results.csv"))
    # the base's own model card
    from anomclip_hf import AnomCLIPModel

    base = AnomCLIPModel.from_base(str(space / "base"))
    assert PIPELINE_CHECK_NOTE in render_base_card(base.config, base.base_identity(), "user/base")


def test_a_real_base_carries_no_label(tiny_model, tmp_path):
    assert not tiny_model.config.random_weights
    tiny_model.add_category("bottle", reference_images=[Image.new("RGB", (30, 30), (90, 90, 90))] * 2)
    tiny_model.save_category(tmp_path / "bottle")
    assert "PIPELINE CHECK" not in (tmp_path / "bottle" / "README.md").read_text()
    assert "random_weights" not in json.loads((tmp_path / "bottle" / "category.json").read_text())["base_model"]


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("command", ["predict", "fit", "evaluate"])
def test_base_errors_name_the_flag(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    images = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(images)
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("x")
    rest = {"predict": ["--category", "c", "--images", str(images), "--output", str(tmp_path / "o")],
            "fit": ["--references", str(tmp_path), "--category", "c", "--output", str(tmp_path / "o")],
            "evaluate": ["--dataset", "mvtec", "--data-root", str(tmp_path), "--output", str(tmp_path / "o")]}[command]
    expected = {"./no_such_dir": "--base ./no_such_dir: folder does not exist",
                "nobody/no-such-model": "--base nobody/no-such-model: not in the local Hugging Face cache and the "
                                        "Hub cannot be reached",
                str(tmp_path / "not_a_model"): "not a model folder: expected config.json and model.safetensors"}
    for base, message in expected.items():
        assert main([command, "--base", base, *rest]) == 2
        err = capsys.readouterr().err
        assert message in err and "--base" in err and len(err.strip().splitlines()) == 1, err
        assert "Repo id must" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_predict_takes_single_files_and_several_paths(space, tmp_path, capsys):
    test = space / "data" / "widget" / "test"
    single = sorted((test / "good").iterdir())[0]
    base, adapter = str(space / "base"), str(space / "fit" / "adapter")
    assert main(["predict", "--base", base, "--category", adapter, "--images", str(single),
                 "--output", str(tmp_path / "one"), "--quiet", "--overlays", "all"]) == 0
    assert [row["path"] for row in _rows(tmp_path / "one" / "scores.csv")] == [str(single)]
    assert (tmp_path / "one" / "overlays" / single.name).is_file()
    defects = [p for p in sorted(test.iterdir()) if p.name != "good"]
    assert main(["predict", "--base", base, "--category", adapter, "--images", str(single), *map(str, defects),
                 "--output", str(tmp_path / "many"), "--quiet", "--overlays", "all"]) == 0
    rows = _rows(tmp_path / "many" / "scores.csv")
    assert len(rows) == 1 + sum(len(os.listdir(d)) for d in defects)
    # overlays mirror the inputs below their common folder
    assert (tmp_path / "many" / "overlays" / "good" / single.name).is_file()
    capsys.readouterr()
    assert main(["predict", "--base", base, "--category", adapter, "--images", str(tmp_path / "nope.png"),
                 "--output", str(tmp_path / "x")]) == 2
    assert "--images" in capsys.readouterr().err


def test_fit_with_one_reference_warns_that_no_threshold_is_stored(space, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted((space / "data" / "widget" / "train" / "good").iterdir())[0], one / "a.png")
    assert main(["fit", "--base", str(space / "base"), "--references", str(one), "--category", "widget",
                 "--output", str(tmp_path / "fit"), "--epochs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "no decision threshold is stored" in captured.err and "--threshold" in captured.err
    assert "PIPELINE CHECK" in captured.out
    # the screen gets two summary lines, the per-epoch terms go to a file
    log = [json.loads(line) for line in (tmp_path / "fit" / "training_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1] and "loss" in log[0]
    assert len(captured.out.strip().splitlines()) == 3


# ----------------------------------------------------------------------------------------- scores and maps
def test_normalised_score_is_one_half_at_the_threshold(space, tmp_path):
    assert normalized_score(0.3, 0.3) == 0.5
    assert normalized_score(0.0, 0.3) == 0.0 and normalized_score(0.15, 0.3) == 0.25
    assert normalized_score(0.9, 0.3) == 1.0 and normalized_score(0.1, None) is None
    # scores.csv: set --threshold to one image's exact score: that row reads 0.5, every row score/(2t)
    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.inference.predictor import predict_folder

    base, adapter = str(space / "base"), str(space / "fit" / "adapter")
    images = str(space / "data" / "widget" / "test")
    model = AnomCLIPModel.from_base(base)
    model.load_category(adapter)
    scores = predict_folder(model, images, str(tmp_path / "first"), progress=False).scores
    path, threshold = list(scores.items())[2]
    assert main(["predict", "--base", base, "--category", adapter, "--images", images, "--output",
                 str(tmp_path / "second"), "--threshold", repr(threshold), "--quiet"]) == 0
    rows = _rows(tmp_path / "second" / "scores.csv")
    (at_threshold,) = [row for row in rows if row["path"] == path]
    assert at_threshold["normalized_score"] == "0.500000" and at_threshold["decision"] == "anomalous"
    for row in rows:
        assert float(row["normalized_score"]) == pytest.approx(min(scores[row["path"]] / (2 * threshold), 1),
                                                               abs=1e-6)
        assert (float(row["normalized_score"]) >= 0.5) == (row["decision"] == "anomalous")


def test_pipeline_output_has_the_normalised_score(space):
    from transformers import pipeline

    from anomclip_hf import AnomCLIPModel

    model = AnomCLIPModel.from_base(str(space / "base"))
    detector = pipeline("image-anomaly-detection", model=model, category=str(space / "fit" / "adapter"))
    result = detector(str(sorted((space / "data" / "widget" / "test" / "good").iterdir())[0]))
    assert result["normalized_score"] == normalized_score(result["score"], result["threshold"])


def test_save_maps_writes_raw_maps_and_masks(space, tmp_path):
    out = tmp_path / "maps"
    assert main(["predict", "--base", str(space / "base"), "--category", str(space / "fit" / "adapter"),
                 "--images", str(space / "data" / "widget" / "test"), "--output", str(out), "--save-maps",
                 "--quiet"]) == 0
    pixel_threshold = json.loads((space / "fit" / "adapter" / "category.json").read_text())["pixel_threshold"]
    maps = sorted((out / "maps").rglob("*.npy"))
    assert len(maps) == len(_rows(out / "scores.csv"))
    for path in maps:
        values = np.load(path)
        assert values.dtype == np.float32 and values.shape == (IMAGE_SIZE, IMAGE_SIZE)
        mask = np.asarray(Image.open(out / "masks" / path.relative_to(out / "maps").with_suffix(".png")))
        np.testing.assert_array_equal(mask, np.where(values > pixel_threshold, 255, 0))


# ----------------------------------------------------------------------------------------- overlays
def test_overlay_of_a_large_photo_is_bounded_and_readable():
    photo = Image.new("RGB", (4000, 3000), (120, 120, 120))
    heat = np.zeros((300, 400), np.float32)
    heat[100:200, 100:200] = 1.0
    truth = (heat > 0.5).astype(np.uint8)
    panel = anomaly_panel(photo, heat, score=0.7, threshold=0.5, pixel_threshold=0.5, ground_truth=truth,
                          note=PIPELINE_CHECK_NOTE)
    assert max(panel.size) <= MAX_SIDE
    layout = overlay_layout((4000, 3000), 2)
    assert panel.size == layout.size and layout.font_size >= 20 and layout.outline >= 3
    pixels = np.asarray(panel)
    top = layout.header_height + layout.title_height
    width, height = layout.panel
    third = pixels[top:, 2 * width:3 * width]
    red = (third == (255, 0, 0)).all(axis=-1)
    # the predicted outline is as thick as the layout says, around the hot square only
    row = red[height // 2]
    assert row.sum() >= 2 * layout.outline
    assert not red[: height // 4].any()
    # the colour bar: jet from red (top) to dark blue (bottom), and the threshold mark in black
    bar = pixels[top:, 3 * width + layout.font_size // 3 + 1]
    assert tuple(bar[0]) == (128, 0, 0) and tuple(bar[-1]) == (0, 0, 128)
    assert (bar == (0, 0, 0)).all(axis=-1).any()
    # the header and the panel titles are drawn
    assert (pixels[:layout.header_height] != 255).any() and (pixels[layout.header_height:top] != 255).any()


def test_overlay_of_a_small_image_keeps_its_size():
    layout = overlay_layout((IMAGE_SIZE, IMAGE_SIZE), 1)
    assert layout.panel == (IMAGE_SIZE, IMAGE_SIZE)
    panel = anomaly_panel(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)), np.zeros((14, 14), np.float32), score=0.1,
                          threshold=0.2)
    assert panel.size == layout.size


# ----------------------------------------------------------------------------------------- folder data set
def test_evaluate_a_labelled_folder_with_masks(space, tmp_path):
    """Normal, abnormal and mask folders (anomalib's Folder layout) from the generated MVTec tree."""
    category = space / "data" / "widget"
    normal, abnormal, masks = tmp_path / "good", tmp_path / "bad", tmp_path / "masks"
    shutil.copytree(category / "train" / "good", normal)
    for defect in (d for d in (category / "test").iterdir() if d.name != "good"):
        shutil.copytree(defect, abnormal / defect.name)
        for mask in (category / "ground_truth" / defect.name).iterdir():  # 000_mask.png, as MVTec names them
            (masks / defect.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(mask, masks / defect.name / mask.name)
    out = tmp_path / "eval"
    assert main(["evaluate", "--base", str(space / "base"), "--dataset", "folder", "--normal-dir", str(normal),
                 "--abnormal-dir", str(abnormal), "--mask-dir", str(masks), "--shots", "2", "--seeds", "0",
                 "--no-train", "--resolution", "56", "--output", str(out)]) == 0
    (cell,) = json.loads((out / "results.json").read_text())["cells"]
    n_abnormal = sum(1 for _ in abnormal.rglob("*.png"))
    assert cell["category"] == "good" and cell["metrics"]["test_images"] == 1 + n_abnormal  # 1 of 4 held out
    assert 0.0 <= cell["metrics"]["pixel_auroc"] <= 1.0 and 0.0 <= cell["metrics"]["aupro"] <= 1.0

    from anomclip_hf.data import LabelledFolder, load_split

    folder = LabelledFolder(normal, abnormal, mask_dir=masks)
    train, test = load_split("folder", folder, None, "train"), load_split("folder", folder, None, "test")
    assert not set(train["path"]) & set(test["path"]) and len(train) == 3
    anomalous = [row for row in test if row["label"] == 1]
    assert len(anomalous) == n_abnormal and all(row["mask_path"].startswith(str(masks)) for row in anomalous)
    assert {row["defect_type"] for row in anomalous} == {d.name for d in abnormal.iterdir()}
    # without masks: image metrics only
    assert main(["evaluate", "--base", str(space / "base"), "--dataset", "folder", "--normal-dir", str(normal),
                 "--abnormal-dir", str(abnormal), "--shots", "2", "--seeds", "0", "--no-train",
                 "--resolution", "56", "--output", str(tmp_path / "nomask")]) == 0
    (cell,) = json.loads((tmp_path / "nomask" / "results.json").read_text())["cells"]  # strict JSON: null, never NaN
    assert cell["metrics"]["pixel_auroc"] is None and 0.0 <= cell["metrics"]["image_auroc"] <= 1.0


def test_labelled_folder_errors_name_the_file(tmp_path, capsys):
    normal, abnormal, masks = tmp_path / "good", tmp_path / "bad", tmp_path / "masks"
    for folder in (normal, abnormal, masks):
        folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(normal / name)
    Image.new("RGB", (8, 8)).save(abnormal / "x.png")
    from anomclip_hf.data import DatasetLayoutError, LabelledFolder, load_split

    with pytest.raises(DatasetLayoutError, match=r"no mask for anomalous image .*x\.png"):
        load_split("folder", LabelledFolder(normal, abnormal, mask_dir=masks), None, "test")
    assert main(["evaluate", "--base", "b", "--dataset", "folder", "--normal-dir", str(normal), "--output",
                 str(tmp_path / "o")]) == 2
