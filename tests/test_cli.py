"""The command line: help, the offline demo, converting the golden open_clip weights, predicting a folder."""

import csv
import json
import os
import subprocess
import sys

import torch
from PIL import Image

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import main
from anomclip_hf.visualization import overlay_layout



def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "anomclip_hf.cli", "--help"], capture_output=True, text=True,
                            check=True)
    for command in ("demo", "convert-open-clip", "predict"):
        assert command in result.stdout


def test_demo_writes_scores_overlays_adapter_and_detects_defects(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never probe the network from a test
    assert main(["demo", "--output", str(tmp_path), "--shots", "2", "--epochs", "0", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == metrics["test_images"] == 18
    overlays = sorted((tmp_path / "overlays").rglob("*.png"))
    assert len(overlays) == 18
    with Image.open(overlays[0]) as picture:
        assert picture.size == overlay_layout((112, 112), 2).size
    # the visual memory separates drawn-in defects even with random weights
    assert metrics["image_auroc"] > 0.75 and metrics["pixel_auroc"] > 0.8
    category = json.loads((tmp_path / "adapter" / "category.json").read_text())
    assert category["shots"] == 2 and len(category["reference_files"]) == 2


def test_convert_golden_open_clip_and_predict(tmp_path, golden, golden_files):
    out = tmp_path / "tiny-vv"
    assert main(["convert-open-clip", "--model", "tiny-vv", "--checkpoint", str(golden_files.weights),
                 "--config", str(golden_files.config), "--output", str(out)]) == 0
    model = AnomCLIPModel.from_base(str(out))
    with torch.no_grad():
        features = model.encode_images(golden["images"]["pixel_values"])
    assert (features.global_embeds - golden["features"]["global"]).abs().max() < 1e-5
    # a category from two of the golden images, then predict on the others
    images = tmp_path / "images"
    images.mkdir()
    for name in golden["images"]["files"]:
        Image.open(golden_files.images / name).save(images / name)
    model.add_category("bottle", reference_images=[Image.open(images / "img_0.png"), Image.open(images / "img_1.png")])
    model.save_category(tmp_path / "bottle")
    assert main(["predict", "--base", str(out), "--category", str(tmp_path / "bottle"), "--images", str(images),
                 "--output", str(tmp_path / "pred"), "--batch-size", "4"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    scores = {os.path.basename(r["path"]): float(r["image_score"]) for r in rows}
    assert len(scores) == 6 and scores["img_0.png"] < min(scores["img_4.png"], scores["img_5.png"])
    assert len(os.listdir(tmp_path / "pred" / "overlays")) == 6
