"""training/train.py end to end: `accelerate launch` in a subprocess, restartable grids, flag parsing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomclip_hf import AnomCLIPModel
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "train.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("script")
    base = str(root / "base")
    AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False)).save_pretrained(base)
    data = generate_mvtec_tree(str(root / "data"), categories=("widget",), n_train=3, n_test_good=1, n_test_defect=1,
                               image_size=32)
    return base, data, root


def _run(command, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_accelerate_launch_trains_then_skips(setup, capsys):
    base, data, root = setup
    out = str(root / "out")
    args = [str(SCRIPT), "--base", base, "--dataset", "mvtec", "--data-root", data, "--category", "widget",
            "--shots", "1", "--seed", "0", "--output-dir", out, "--preset", "ref-code", "--epochs", "2",
            "--checkpoint-every", "1", "--no-progress"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu"]
    first = _run(launch + args)
    assert first.returncode == 0, first.stderr[-3000:]
    job_dir = Path(out) / "mvtec" / "widget" / "1shot" / "seed0"
    record = json.loads((job_dir / "adapter" / "category.json").read_text())
    assert record["prompt_layout"]["anomaly_token_position"] == "before_class"  # the preset's model setting
    assert record["training"]["schedule"] == "joint" and record["training"]["epochs"] == 2
    summary = json.loads((Path(out) / "summary.json").read_text())
    (job,) = summary["jobs"]
    assert job["status"] == "trained" and job["reference_files"] == record["reference_files"]
    assert sorted(os.listdir(job_dir / "checkpoints")) == ["epoch_0001", "epoch_0002"]

    # A second run, as plain `python training/train.py` (its main() in this process), skips the finished job.
    assert _load_script().main(args[1:]) == 0
    assert "skipped" in capsys.readouterr().out
    (job,) = json.loads((Path(out) / "summary.json").read_text())["jobs"]
    assert job["status"] == "skipped" and job["reference_files"] == record["reference_files"]


def test_flags_override_the_preset():
    script = _load_script()
    args = script.build_parser().parse_args([
        "--base", "b", "--data-root", "d", "--category", "bottle", "cable", "--shots", "1", "2", "--seeds", "0", "1",
        "--output-dir", "o", "--epochs", "6", "--stage2-epochs", "5", "--lr", "0.01", "--weight_decay", "0",
        "--model-setting", "anomaly_token_position=before_class", "--model-setting", "category_phrases=false",
        "--no-progress", "--prompt-seed", "7"])
    config = script.config_from_args(args)
    assert (config.stage1_epochs, config.stage2_epochs, config.lr, config.weight_decay) == (3, 5, 0.01, 0.0)
    assert config.model == {"anomaly_token_position": "before_class", "category_phrases": False}
    assert config.prompt_seed == 7 and config.progress_bar is False and config.preset == "paper"
    assert (args.categories, args.shots, args.seeds) == (["bottle", "cable"], [1, 2], [0, 1])


def test_bad_dataset_exits_with_a_message(setup, capsys):
    base, data, root = setup
    code = _load_script().main(["--base", base, "--dataset", "kaggle", "--data-root", data, "--category", "widget",
                                "--output-dir", str(root / "bad")])
    assert code == 2
    assert "unknown dataset 'kaggle'" in capsys.readouterr().err
    assert not (root / "bad").exists()
