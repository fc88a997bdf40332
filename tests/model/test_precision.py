"""--precision / precision=: the choice and its fallbacks, and float32 state under every precision."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from anomclip_hf.flags.precision import PRECISIONS, normalize_precision
from anomclip_hf.inference.batch_scoring import score_images
from anomclip_hf.model import precision as precision_module
from anomclip_hf.model.precision import resolve_precision, tower_autocast
from anomclip_hf.training import (
    TrainingConfig,
    build_optimizer,
    config_from_args,
    training_step,
)
from anomclip_hf.training.step import ShotFeatures


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: {"avx2", "fma", "avx512f"})


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})


def test_spellings_and_bad_values():
    assert [normalize_precision(v) for v in ("fp32", "no", "none", None, "BF16", "bfloat16", "float16", "auto")] == \
        ["fp32", "fp32", "fp32", "fp32", "bf16", "bf16", "fp16", "auto"]
    with pytest.raises(ValueError, match="precision='int8'.*fp32"):
        normalize_precision("int8")
    with pytest.raises(ValueError, match="precision='half'"):
        TrainingConfig(precision="half")


def test_auto_on_a_cpu_without_bf16_falls_back_to_float32_and_says_so(cpu_without_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="anomclip_hf.model.precision"):
        choice = resolve_precision("auto", "cpu")
    assert (choice.requested, choice.precision, choice.autocast_dtype) == ("auto", "fp32", None)
    assert "no AVX512_BF16/AMX/BF16" in choice.reason and "float32" in choice.reason
    assert choice.describe() in caplog.text and "(asked auto)" in caplog.text


def test_auto_on_a_cpu_with_bf16_runs_bf16(cpu_with_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="anomclip_hf.model.precision"):
        choice = resolve_precision("auto", "cpu")
    assert (choice.precision, choice.autocast_dtype) == ("bf16", torch.bfloat16)
    assert "avx512_bf16" in choice.reason and "avx512_bf16" in caplog.text


def test_torch_capability_probe_counts(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: set())
    assert resolve_precision("auto", "cpu").precision == "bf16"


def test_explicit_bf16_without_native_support_runs_and_warns(cpu_without_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="anomclip_hf.model.precision"):
        choice = resolve_precision("bf16", "cpu")
    assert choice.precision == "bf16"  # honoured: the drift can be measured anywhere
    assert any(r.levelno == logging.WARNING and "emulated" in r.getMessage() for r in caplog.records)
    assert resolve_precision("fp32", "cpu").autocast_dtype is None


def test_auto_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda").precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    choice = resolve_precision("auto", "cuda:0")
    assert choice.precision == "fp32" and "compute capability" in choice.reason
    assert resolve_precision("fp16", "cuda").precision == "fp16"
    assert resolve_precision("auto", "mps").precision == "fp32"


def test_one_flag_for_every_command():
    from anomclip_hf.cli import build_parser

    parser = build_parser()
    common = ["--base", "B", "--output", "O"]
    commands = {"fit": ["fit", *common, "--references", "R", "--category", "c"],
                "evaluate": ["evaluate", *common, "--dataset", "mvtec", "--data-root", "D"],
                "predict": ["predict", *common, "--category", "c", "--images", "I"]}
    for name, argv in commands.items():
        for flag, value, expected in (("--precision", "auto", "auto"), ("--precision", "bf16", "bf16")):
            assert parser.parse_args(argv + [flag, value]).precision == expected, name
    assert parser.parse_args(commands["predict"]).precision == "fp32"  # the default stays float32
    assert parser.parse_args(commands["predict"] + ["--precision", "none"]).precision == "fp32"  # another name
    fit = parser.parse_args(commands["fit"] + ["--precision", "no"])  # accelerate's name of fp32
    assert fit.precision == "fp32" and config_from_args(fit).precision == "fp32"
    assert config_from_args(parser.parse_args(commands["evaluate"] + ["--precision", "auto"])).precision == "auto"
    assert config_from_args(parser.parse_args(commands["fit"])).precision == "fp32"  # the preset's
    with pytest.raises(SystemExit):
        parser.parse_args(commands["predict"] + ["--precision", "int8"])
    for removed in (["predict", "--autocast", "bf16"], ["fit", "--mixed-precision", "no"],
                    ["fit", "--mixed_precision", "no"], ["fit", "--resume_from_checkpoint", "x"],
                    ["predict", "--memory_backbone", "x"]):  # spellings of a release that never happened
        with pytest.raises(SystemExit):
            parser.parse_args(commands[removed[0]] + removed[1:])


def test_train_script_has_the_flag():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "training" / "train.py"
    spec = importlib.util.spec_from_file_location("train_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.build_parser().parse_args(["--base", "B", "--data-root", "D", "--category", "c", "--output-dir",
                                             "O", "--precision", "bf16"])
    assert config_from_args(args).precision == "bf16"


def test_older_configs_read_mixed_precision():
    assert TrainingConfig.from_dict({"mixed_precision": "no"}).precision == "fp32"
    assert TrainingConfig.from_dict({"mixed_precision": "bf16"}).precision == "bf16"
    assert "precision" in TrainingConfig(precision="auto").run_fingerprint()
    # a checkpoint written with the older key resumes under the new one (and only with the same value)
    from anomclip_hf.training.checkpointing import TrainingProgress

    fingerprint = TrainingConfig().run_fingerprint()
    legacy = {k: v for k, v in fingerprint.items() if k != "precision"}
    progress = TrainingProgress(fingerprint=fingerprint)
    progress.load_state_dict({"fingerprint": {**legacy, "mixed_precision": "no"}, "epoch": 3, "history": [],
                              "wall_time_s": 1.0})
    assert progress.epoch == 3
    with pytest.raises(ValueError, match="precision"):
        progress.load_state_dict({"fingerprint": {**legacy, "mixed_precision": "bf16"}, "epoch": 3, "history": [],
                                  "wall_time_s": 1.0})


@pytest.fixture
def category_model(tiny_model):
    generator = torch.Generator().manual_seed(0)
    tiny_model.add_category("bottle", reference_images=torch.randn(3, 3, 30, 30, generator=generator),
                            learned_prompts=True)
    return tiny_model


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_state_stays_float32_under_every_precision(category_model, name):
    model = category_model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    choice = resolve_precision(name, "cpu")
    pictures = [np.random.default_rng(i).integers(0, 256, (30, 30, 3), dtype=np.uint8) for i in range(2)]
    from PIL import Image

    images = [Image.fromarray(p) for p in pictures]
    batch, = score_images(model, images, output_size=40, progress=False, precision=name)
    assert batch.image_scores.dtype == batch.anomaly_maps.dtype == np.float32
    # the forward itself (as the pipeline runs it) returns float32 scores, maps and memory distances
    pixel_values = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode(), tower_autocast(choice, "cpu"):
        out = model(pixel_values, output_size=40)
        features = model.encode_images(pixel_values)
    with torch.inference_mode():
        plain = model.encode_images(pixel_values)
    assert out.image_scores.dtype == out.anomaly_maps.dtype == out.memory_patch_scores.dtype == torch.float32
    ran_low = not torch.equal(features.memory_features[0].float(), plain.memory_features[0])
    assert ran_low == (name != "fp32")  # the tower did run low, and only when asked
    # training under the same precision
    state = model.get_category("bottle")
    shots = ShotFeatures(image=torch.nn.functional.normalize(torch.randn(2, 16), dim=-1),
                         pixel=torch.nn.functional.normalize(torch.randn(2, 225, 16), dim=-1))
    shots = ShotFeatures(image=shots.image[:, :model.config.clip_config.projection_dim],
                         pixel=shots.pixel[..., :model.config.clip_config.projection_dim])
    vectors = model.prompt_parameters("bottle")
    config = TrainingConfig(stage1_epochs=1, stage2_epochs=1, precision=name)
    optimizer = build_optimizer(vectors, config)
    training_step(model, "bottle", shots, optimizer, config, True, precision=choice)
    model.clear_prototype_cache("bottle")
    with tower_autocast(choice, "cpu"):
        prototypes = model.text_prototypes("bottle")
    assert vectors[0].dtype == vectors[0].grad.dtype == optimizer.state[vectors[0]]["momentum_buffer"].dtype \
        == torch.float32
    assert all(layer.dtype == torch.float32 for layer in state.memory_bank)
    assert all(p.dtype == torch.float32 for p in prototypes.values())
    after = model.state_dict()
    for key, value in weights.items():
        assert after[key].dtype == value.dtype, key
        if not key.startswith("category_bank.prompt_tokens."):  # the prompt vectors trained; nothing else changed
            assert torch.equal(after[key], value), key


def test_low_precision_scores_are_close_to_float32(category_model):
    from PIL import Image

    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 30, 3), dtype=np.uint8))
              for i in range(3)]
    full, = score_images(category_model, images, output_size=40, progress=False)
    low, = score_images(category_model, images, output_size=40, progress=False, precision="bf16")
    assert not np.array_equal(low.anomaly_maps, full.anomaly_maps)  # bf16 did take effect
    assert np.abs(low.image_scores - full.image_scores).max() < 0.02
    assert np.abs(low.anomaly_maps - full.anomaly_maps).max() < 0.05


def test_pipeline_precision(category_model):
    from PIL import Image
    from transformers import pipeline

    from anomclip_hf import ImageAnomalyDetectionPipeline  # noqa: F401  (registers the task)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    detector = pipeline("image-anomaly-detection", model=category_model, device="cpu")
    full = detector(image, category="bottle")
    low = detector(image, category="bottle", precision="bf16")
    assert low["anomaly_map"].dtype == np.float32 and low["score"] != full["score"]
    assert abs(low["score"] - full["score"]) < 0.02
    assert PRECISIONS == ("fp32", "bf16", "fp16", "auto")
