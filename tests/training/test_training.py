"""Prompt training: the loop, its stages, golden one-step parity, resume, adapters and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from golden_setup import REFERENCE_PRESET, golden_model

from anomclip_hf import AnomCLIPModel
from anomclip_hf.data import DatasetLayoutError, generate_mvtec_tree
from anomclip_hf.io.image_io import ImageReadError
from anomclip_hf.model.processing_anomclip import AnomCLIPProcessor
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer
from anomclip_hf.training import (
    TrainingConfig,
    build_optimizer,
    encode_shots,
    run_grid,
    train_category,
    training_step,
)

CATEGORY = "widget"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "mvtec"
    return generate_mvtec_tree(str(root), categories=(CATEGORY,), n_train=4, n_test_good=2, n_test_defect=1,
                               image_size=32)


@pytest.fixture(scope="module")
def base_dir(tiny_clip, tmp_path_factory):
    """An AnomCLIP base folder (with its tokenizer), as `--base` takes it."""
    folder = str(tmp_path_factory.mktemp("base"))
    AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False)).save_pretrained(folder)
    return folder


def fast_config(**overrides) -> TrainingConfig:
    settings = dict(stage1_epochs=2, stage2_epochs=2, checkpoint_every=0, trackers="none", progress_bar=False)
    return TrainingConfig(**{**settings, **overrides})


def test_training_lowers_loss_touches_only_prompts_and_adapter_reloads(tiny_model, data_root, base_dir, tmp_path):
    clip_before = {k: v.clone() for k, v in tiny_model.clip.state_dict().items()}
    config = fast_config(stage1_epochs=3, stage2_epochs=3)
    summary = train_category(tiny_model, CATEGORY, str(tmp_path / "job"), data_root=data_root, shots=2, seed=0,
                             config=config)

    history = json.loads((tmp_path / "job" / "summary.json").read_text())["history"]
    for stage in ("stage1", "stage2"):  # each stage minimises one fixed objective
        losses = [logs["loss"] for logs in history if logs["stage"] == stage]
        assert losses[-1] < losses[0], (stage, losses)
    clip_after = tiny_model.clip.state_dict()
    assert clip_after.keys() == clip_before.keys()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)
    vectors = tiny_model.prompt_parameters(CATEGORY)[0]
    assert not torch.equal(vectors.detach(), tiny_model.initial_prompt_vectors(config.prompt_seed))

    record = json.loads((tmp_path / "job" / "adapter" / "category.json").read_text())
    assert record["seed"] == 111 and record["shots"] == 2
    # two shots: a leave-one-out threshold, above both held-out scores by the margin
    estimate = record["threshold_estimate"]
    assert record["decision_threshold"] == summary["decision_threshold"] == estimate["image"]
    assert estimate["image"] == pytest.approx((1 + estimate["margin"]) * max(estimate["leave_one_out_image_scores"]))
    assert record["reference_files"] == summary["reference_files"] and len(summary["reference_files"]) == 2
    assert all(name.startswith(f"{CATEGORY}/train/good/") for name in summary["reference_files"])
    training = record["training"]
    assert training["epochs"] == 6 and training["stage_epochs"] == {"stage1": 3, "stage2": 3}
    assert set(training["final_losses"]) == {"stage1", "stage2"} and training["config"]["lr"] == 0.002
    assert training["wall_time_s"] > 0

    fresh = AnomCLIPModel.from_pretrained(base_dir)
    fresh.load_category(str(tmp_path / "job" / "adapter"))
    test_dir = os.path.join(data_root, CATEGORY, "test")
    images = [os.path.join(test_dir, d, sorted(os.listdir(os.path.join(test_dir, d)))[0]) for d in ("good", "blob")]
    pixel_values = AnomCLIPProcessor.from_model(fresh)(images=images)["pixel_values"]
    with torch.no_grad():
        trained, reloaded = tiny_model(pixel_values, category=CATEGORY), fresh(pixel_values)
    assert torch.equal(trained.image_scores, reloaded.image_scores)
    assert torch.equal(trained.anomaly_maps, reloaded.anomaly_maps)


def test_margin_term_only_in_stage_two_or_joint(tiny_model, data_root, tmp_path):
    tensorboard = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train_category(tiny_model, CATEGORY, str(tmp_path / "two"), data_root=data_root, config=fast_config(trackers="auto"))
    history = json.loads((tmp_path / "two" / "summary.json").read_text())["history"]
    assert [logs["stage"] for logs in history] == ["stage1", "stage1", "stage2", "stage2"]
    for logs in history:
        for head in ("image", "pixel"):
            assert (f"{head}/loss_eam" in logs) == (logs["stage"] == "stage2")
            margin = logs.get(f"{head}/loss_eam", 0.0)
            expected = logs[f"{head}/loss_ce"] + margin + 0.001 * logs[f"{head}/loss_align"]
            assert logs[f"{head}/loss"] == pytest.approx(expected, rel=1e-6)
    # the same terms went through accelerator.log to tensorboard
    events = tensorboard.EventAccumulator(str(tmp_path / "two" / "logs"))
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["train/image/loss_ce"] == [1, 2, 3, 4]
    assert steps["train/image/loss_eam"] == steps["train/pixel/loss_eam"] == [3, 4]

    joint = fast_config(schedule="joint", joint_epochs=2)
    train_category(tiny_model, CATEGORY, str(tmp_path / "joint"), data_root=data_root, config=joint)
    history = json.loads((tmp_path / "joint" / "summary.json").read_text())["history"]
    assert [logs["stage"] for logs in history] == ["joint", "joint"]
    assert all("image/loss_eam" in logs and "pixel/loss_eam" in logs for logs in history)


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_golden_one_step_with_reference_preset(golden_clip, real_tokenizer, golden):
    config = TrainingConfig.from_preset("ref-code")
    assert config.schedule == "joint" and config.total_epochs == 100
    assert config.model.items() <= REFERENCE_PRESET.items()
    model = golden_model(golden_clip, real_tokenizer, golden)
    features = encode_shots(model, golden["images"]["pixel_values"][0:2])
    assert (features.image - golden["features"]["global"][0:2]).abs().max() < 1e-5
    assert (features.pixel - golden["features"]["patch_vv"][0:2]).abs().max() < 1e-5

    vectors = model.prompt_parameters("bottle")
    optimizer = build_optimizer(vectors, config)
    terms = training_step(model, "bottle", features, optimizer, config, use_margin=config.uses_margin(1))

    cls, seg = golden["train_step"]["cls"], golden["train_step"]["seg"]
    assert terms["image/loss_ce"] == pytest.approx(cls["loss_ce"], abs=1e-5)
    assert terms["image/loss_eam"] == pytest.approx(cls["loss_eam"], abs=1e-5)
    assert terms["image/loss_align"] == pytest.approx(cls["loss_align"], abs=1e-5)
    assert terms["image/loss"] == pytest.approx(cls["loss_total"], abs=1e-5)
    width = cls["normal_ctx_before"].shape[-1]
    n_normal = cls["normal_ctx_before"].shape[0] * cls["normal_ctx_before"].shape[1]  # image rows: N*E, then L*E_A
    n_anomaly = cls["abnormal_ctx_before"].shape[0] * cls["abnormal_ctx_before"].shape[1]
    grad = vectors[0].grad
    assert _relative_l2(grad[:n_normal], cls["grad_normal_ctx"].reshape(-1, width)) < 1e-4
    assert _relative_l2(grad[n_normal:n_normal + n_anomaly], cls["grad_abnormal_ctx"].reshape(-1, width)) < 1e-4
    after = vectors[0].detach()
    assert (after[:n_normal] - cls["normal_ctx_after_step"].reshape(-1, width)).abs().max() < 1e-6
    assert (after[n_normal:n_normal + n_anomaly] - cls["abnormal_ctx_after_step"].reshape(-1, width)).abs().max() < 1e-6

    # pixel head: CE and align as the reference; the margin term is reduced over the feature axis on purpose
    assert terms["pixel/loss_ce"] == pytest.approx(seg["loss_ce"], abs=1e-5)
    assert terms["pixel/loss_align"] == pytest.approx(seg["loss_align"], abs=1e-5)
    assert terms["pixel/loss_eam"] == pytest.approx(seg["derived_loss_eam_feature_axis"], abs=1e-5)
    assert abs(terms["pixel/loss_eam"] - seg["loss_eam"]) > 0.1


class Killed(Exception):
    pass


def _kill_after(epoch: int):
    def callback(done: int, logs: dict) -> None:
        if done == epoch:
            raise Killed(f"killed after epoch {done}")
    return callback


def test_resume_after_kill_equals_uninterrupted_run(base_dir, data_root, tmp_path):
    config = fast_config(stage1_epochs=3, stage2_epochs=3, checkpoint_every=2)
    job = dict(data_root=data_root, shots=2, seed=1, config=config)
    reference = AnomCLIPModel.from_pretrained(base_dir)
    train_category(reference, CATEGORY, str(tmp_path / "straight"), **job)
    expected = reference.prompt_parameters(CATEGORY)[0].detach().clone()

    killed = str(tmp_path / "killed")
    with pytest.raises(Killed):
        train_category(base_dir, CATEGORY, killed, callbacks=[_kill_after(3)], **job)
    assert not os.path.exists(os.path.join(killed, "adapter"))
    assert sorted(os.listdir(os.path.join(killed, "checkpoints"))) == ["epoch_0002"]  # stage 1, before the kill

    with pytest.raises(ValueError, match="different run"):
        train_category(base_dir, CATEGORY, killed, resume_from_checkpoint="latest",
                       **{**job, "config": fast_config(stage1_epochs=3, stage2_epochs=3, lr=0.01)})
    resumed = AnomCLIPModel.from_pretrained(base_dir)  # a new process: nothing survives but the checkpoint
    summary = train_category(resumed, CATEGORY, killed, resume_from_checkpoint="latest", **job)
    assert summary["resumed_from"].endswith("epoch_0002")
    assert (resumed.prompt_parameters(CATEGORY)[0].detach() - expected).abs().max() < 1e-6
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())["history"]
    history = json.loads(open(os.path.join(killed, "summary.json")).read())["history"]
    assert [(h["epoch"], h["stage"]) for h in history] == [(h["epoch"], h["stage"]) for h in straight]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in straight], abs=1e-6)
    assert os.path.isfile(os.path.join(killed, "adapter", "category.json"))


def _broken_tree(root: str, problem: str) -> str:
    generate_mvtec_tree(root, categories=(CATEGORY,), n_train=3, n_test_good=1, n_test_defect=1, image_size=32)
    good = os.path.join(root, CATEGORY, "train", "good")
    if problem == "no_normal_images":
        for name in os.listdir(good):
            os.remove(os.path.join(good, name))
    elif problem == "garbage_image":
        with open(os.path.join(good, "001.png"), "wb") as handle:
            handle.write(b"this is not a png")
    elif problem == "truncated_image":  # the header reads fine; decoding fails
        path = os.path.join(good, "001.png")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    return root


@pytest.mark.parametrize("problem,kwargs,error,message", [
    ("no_normal_images", {}, DatasetLayoutError, "has no normal training images"),
    ("too_many_shots", {"shots": 4}, ValueError, r"cannot draw k=4 shots from 3 normal images"),
    ("garbage_image", {}, ImageReadError, r"cannot read image file .*001\.png"),
    ("truncated_image", {"shots": 3}, ImageReadError, r"cannot read image file .*001\.png"),
    ("unknown_dataset", {"dataset": "mvtech"}, ValueError, "unknown dataset 'mvtech'; known datasets: mvtec"),
])
def test_bad_input_fails_clearly_and_writes_nothing(tiny_model, tmp_path, problem, kwargs, error, message):
    root = _broken_tree(str(tmp_path / "data"), problem)
    job_dir = tmp_path / "job"
    with pytest.raises(error, match=message):
        train_category(tiny_model, CATEGORY, str(job_dir), data_root=root, config=fast_config(), **kwargs)
    assert not job_dir.exists()


def test_grid_records_a_failed_job_and_trains_the_others(tiny_model, tmp_path):
    root = _broken_tree(str(tmp_path / "data"), "garbage_image")
    generate_mvtec_tree(root, categories=("gadget",), n_train=2, n_test_good=1, n_test_defect=1, image_size=32,
                        exist_ok=True)
    out = tmp_path / "out"
    results = run_grid(tiny_model, "mvtec", root, "all", [1], [0], str(out), config=fast_config(stage1_epochs=1,
                                                                                                   stage2_epochs=1))
    status = {r["category"]: r["status"] for r in results}
    assert status == {"gadget": "trained", CATEGORY: "failed"}
    summary = json.loads((out / "summary.json").read_text())
    failed = [job for job in summary["jobs"] if job["status"] == "failed"][0]
    assert "cannot read image file" in failed["error"]
    assert not (out / "mvtec" / CATEGORY / "1shot" / "seed0" / "adapter").exists()
    assert (out / "mvtec" / "gadget" / "1shot" / "seed0" / "adapter" / "category.json").is_file()
    with pytest.raises(ValueError, match="unknown dataset"):
        run_grid(tiny_model, "kaggle", root, "all", [1], [0], str(out), config=fast_config())


def test_config_presets_and_overrides(tmp_path):
    paper = TrainingConfig.from_preset("paper")
    assert paper.to_dict() == {**TrainingConfig().to_dict(), "model": {"anomaly_token_position": "suffix"},
                               "preset": "paper"}
    assert [paper.stage(e) for e in (1, 50, 51, 100)] == ["stage1", "stage1", "stage2", "stage2"]
    assert not paper.uses_margin(50) and paper.uses_margin(51)
    ref = TrainingConfig.from_preset("ref-code", {"lr": "1e-3", "model": {"category_phrases": False}})
    assert ref.uses_margin(1) and ref.lr == 0.001
    assert ref.model == {"anomaly_token_position": "before_class", "category_phrases": False}
    assert TrainingConfig().with_epochs(5).stage1_epochs == 2
    custom = tmp_path / "mine.yaml"
    custom.write_text("schedule: joint\njoint_epochs: 7\n")
    assert TrainingConfig.from_preset(str(custom)).total_epochs == 7
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainingConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="unknown model setting"):
        TrainingConfig(model={"n_context": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        TrainingConfig.from_preset("nope")


def test_low_precision_training_keeps_float32_prompts_state_and_weights(tiny_model, data_root):
    """bf16 towers (autocast, on the CPU here): the prompt vectors, their gradients, the optimizer state and
    the losses stay float32, and the CLIP weights are never touched."""
    from anomclip_hf.model.precision import resolve_precision

    before = {k: v.clone() for k, v in tiny_model.clip.state_dict().items()}
    image = os.path.join(data_root, CATEGORY, "train", "good", "000.png")
    pixel_values = AnomCLIPProcessor.from_model(tiny_model)(images=[image])["pixel_values"]
    tiny_model.add_category(CATEGORY, reference_images=pixel_values, learned_prompts=True)
    features = encode_shots(tiny_model, pixel_values)
    vectors = tiny_model.prompt_parameters(CATEGORY)
    config = fast_config(precision="bf16")
    optimizer = build_optimizer(vectors, config)
    terms = training_step(tiny_model, CATEGORY, features, optimizer, config, True,
                          precision=resolve_precision(config.precision, "cpu"))
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert vectors[0].dtype == vectors[0].grad.dtype == torch.float32
    assert optimizer.state[vectors[0]]["momentum_buffer"].dtype == torch.float32
    after = tiny_model.clip.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)


def test_bf16_training_step_is_close_to_the_float32_step(tiny_clip):
    """One step with the text tower under bf16 autocast against the same step in float32, from the same vectors
    and shots.
    Measured on this data: loss terms differ by at most 5.2e-3 (total 6.53), the gradient and the SGD update
    by 1.5e-2 relative (L2), the updated vectors by at most 2.2e-5 (the update itself is up to 1.8e-3);
    the bounds below leave a factor of about 4."""
    from anomclip_hf.model.precision import resolve_precision

    shots = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    config = fast_config()
    runs = {}
    for precision in ("no", "bf16"):
        model = AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))
        model.add_category(CATEGORY, reference_images=shots, learned_prompts=True, seed=0)
        features = encode_shots(model, shots)  # float32 shots in both runs, as the loop encodes them
        vectors = model.prompt_parameters(CATEGORY)
        start = vectors[0].detach().clone()
        terms = training_step(model, CATEGORY, features, build_optimizer(vectors, config), config, use_margin=True,
                              temperature=model.temperature, precision=resolve_precision(precision, "cpu"))
        runs[precision] = terms, start, vectors[0].detach().clone(), vectors[0].grad.clone()
    (terms32, start32, after32, grad32), (terms16, start16, after16, grad16) = runs["no"], runs["bf16"]
    assert torch.equal(start32, start16)
    assert terms16.keys() == terms32.keys() and terms16 != terms32  # bf16 did take effect
    for name, value in terms32.items():
        assert terms16[name] == pytest.approx(value, abs=0.02), name
    assert _relative_l2(grad16, grad32) < 0.06
    assert _relative_l2(after16 - start16, after32 - start32) < 0.06
    assert (after16 - after32).abs().max() < 1e-4
