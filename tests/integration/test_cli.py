"""The command line: help, the offline demo, converting the golden open_clip weights, predicting a folder."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import build_parser, main
from anomclip_hf.inference.visualization import overlay_layout

COMMANDS = ("demo", "convert-open-clip", "push", "predict", "export", "fit", "calibrate", "evaluate", "app", "serve",
            "watch")


def test_help_lists_commands():
    """The one subprocess smoke test: `python -m anomclip_hf.cli` starts and prints its help."""
    result = subprocess.run([sys.executable, "-m", "anomclip_hf.cli", "--help"], capture_output=True, text=True,
                            check=True)
    for command in COMMANDS:
        assert command in result.stdout


def test_help_in_process_lists_every_command_with_its_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per command, whatever the terminal
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: anomclip ") and "PromptAD few-shot anomaly detection on CLIP" in out
    commands = next(action for action in build_parser()._actions if action.dest == "command")
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    assert sorted(helps) == sorted(COMMANDS)
    for command, text in helps.items():
        assert text and any(line.split() == [command] + text.split() for line in out.splitlines()), command


@pytest.mark.parametrize("argv,message", [
    ([], "anomclip: error: the following arguments are required: command"),
    (["nope"], "anomclip: error: argument command: invalid choice: 'nope'"),
    (["predict", "--base", "b"], "anomclip predict: error: the following arguments are required: --images, "
                                 "--output"),
    (["predict", "--base", "b", "--category", "c", "--images", "i", "--output", "o", "--precision", "fp8"],
     "anomclip predict: error: argument --precision: precision='fp8'; expected one of"),
    (["demo", "--shots", "two"], "anomclip demo: error: argument --shots: expected an integer >= 1, got 'two'"),
    (["evaluate", "--base", "b", "--dataset", "kaggle", "--data-root", "r", "--output", "o"],
     "anomclip evaluate: error: argument --dataset: invalid choice: 'kaggle'"),
])
def test_argument_errors_exit_2_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines()[-1].startswith(message)
    assert captured.err.startswith("usage: anomclip")


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


def _refuse_network(monkeypatch) -> list:
    """Every way out refused and recorded: DNS, TCP connects; the Hub's offline switch off, as for a user who
    never set HF_HUB_OFFLINE. The list of attempts must stay empty."""
    import socket

    from huggingface_hub import constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError(-2, "Name or service not known (the test allows no network)")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    return attempts


@pytest.mark.parametrize("local_base", [False, True], ids=["embedded-base", "saved-base-folder"])
def test_demo_on_a_local_base_never_reaches_for_the_network(local_base, tmp_path, capsys, caplog, monkeypatch):
    # Offline, the embedded base was looked up on the Hub by its name (retries and a network warning).
    from anomclip_hf.model import embedded_base

    monkeypatch.setattr(embedded_base, "hub_reachable", lambda *args, **kwargs: False)  # the one probe: "offline"
    argv = ["demo", "--output", str(tmp_path / "out"), "--shots", "2", "--epochs", "0", "--quiet"]
    if local_base:
        embedded_base.embedded_demo_model(seed=0).save_pretrained(tmp_path / "base")
        argv += ["--base", str(tmp_path / "base")]
    attempts = _refuse_network(monkeypatch)
    assert main(argv) == 0
    assert attempts == []
    printed = capsys.readouterr()
    said = printed.out + printed.err + caplog.text
    for sign in ("thrown while requesting", "huggingface.co", "Errno", "Retrying", "resolve/main"):
        assert sign not in said, said
    assert (tmp_path / "out" / "scores.csv").exists()


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
                 "--output", str(tmp_path / "pred"), "--batch-size", "4", "--overlays", "all"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    scores = {os.path.basename(r["path"]): float(r["image_score"]) for r in rows}
    assert len(scores) == 6 and scores["img_0.png"] < min(scores["img_4.png"], scores["img_5.png"])
    assert len(os.listdir(tmp_path / "pred" / "overlays")) == 6
