"""The DINOv2 visual memory: parity with AnomalyDINO's reference code, an independent brute-force
recomputation, the fused mode, adapters and bases that record the memory backbone.

tests/golden/dino/ holds tiny random DINOv2 folders (plain and with registers), five images and what
AnomalyDINO's own `run_anomaly_detection` gave on them (see make_dino_golden.py there).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from anomclip_hf import AnomCLIPModel, AnomCLIPProcessor
from anomclip_hf.data.synthetic_images import render_normal, render_sample
from anomclip_hf.memory.dino import dino_patch_features, top_fraction_mean
from anomclip_hf.model.processing_anomclip import model_inputs
from anomclip_hf.model.scoring import (
    harmonic_fusion,
    smooth_upsample,
    upsample_patch_map,
)
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "dino"
VARIANTS = ("tiny_dinov2", "tiny_dinov2_reg")
TEST_NAMES = ("good", "scratch", "blob")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def dino_model(tiny_clip, backbone, **settings) -> AnomCLIPModel:
    """The tiny CLIP of conftest with a DINOv2 memory (a copy: from_clip wraps the CLIP it is given)."""
    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                   memory_backbone=backbone, **settings)


@pytest.fixture(scope="module")
def reference():
    return json.loads((GOLDEN / "reference.json").read_text()), load_file(str(GOLDEN / "reference.safetensors"))


def golden_paths(names, prefix="test"):
    return [str(GOLDEN / "images" / f"{prefix}_{name}.png") for name in names]


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("variant", VARIANTS)
def test_dino_memory_alone_equals_anomalydino(tiny_clip, reference, variant):
    record, arrays = reference
    # AnomalyDINO's setting: resolution 224 (a 16 x 16 grid; the 5 x 5 position table is interpolated), its
    # maps at the image size (112) blurred with sigma 4 there.
    model = dino_model(tiny_clip, str(GOLDEN / variant), memory_image_size=record["resolution"],
                       gaussian_sigma=4.0, sigma_reference_size=record["image_size"])
    model.add_category("widget", reference_images=golden_paths(range(record["shots"]), "train"))
    with torch.no_grad():
        out = model(**model_inputs(model.config, golden_paths(TEST_NAMES)), mode="memory",
                    output_size=record["image_size"])
    stride = record["map_stride"]
    for index, name in enumerate(TEST_NAMES):
        distances = arrays[f"{variant}.{name}.patch_distances"].flatten()
        assert out.memory_patch_scores[index].shape == distances.shape
        assert torch.allclose(out.memory_patch_scores[index], distances, atol=1e-5, rtol=0)
        assert abs(float(out.image_scores[index]) - record["image_scores"][variant][name]) < 1e-5
        assert torch.allclose(out.anomaly_maps[index, ::stride, ::stride], arrays[f"{variant}.{name}.map"],
                              atol=1e-5, rtol=0)
    # the golden numbers are not degenerate: the images score differently
    assert len({round(v, 4) for v in record["image_scores"][variant].values()}) == 3


def test_transformers_forward_differs_from_the_original_interpolation(reference):
    """Why memory.dino runs its own forward: transformers' Dinov2Model resizes the position table to size n,
    the original DINOv2 (and so AnomalyDINO's features) by scale factor (n + 0.1) / N."""
    record, arrays = reference
    backbone = Dinov2Model.from_pretrained(GOLDEN / "tiny_dinov2").eval()
    pixels = torch.from_numpy(np.stack([_pixels(path, 224) for path in golden_paths(TEST_NAMES)]))
    with torch.no_grad():
        ours = dino_patch_features(backbone, pixels)
        theirs = torch.nn.functional.normalize(backbone(pixel_values=pixels).last_hidden_state[:, 1:], dim=-1)
    assert (ours - theirs).abs().max() > 1e-5


def _pixels(path, size, mean=IMAGENET[0], std=IMAGENET[1]) -> np.ndarray:
    """(3, S, S) float32: RGB, bicubic resize of the whole image, /255, ImageNet normalisation (numpy only)."""
    image = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return ((image / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("registers", [0, 3])
def test_brute_force_recomputation(tiny_clip, tmp_path, registers):
    """At the checkpoint's own grid the features are transformers' forward (no interpolation): recompute the
    memory branch from them with plain numpy float64 loops, nearest neighbour by exhaustive search."""
    sizes = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=7)
    torch.manual_seed(registers)
    backbone = (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**sizes, num_register_tokens=registers))
                if registers else Dinov2Model(Dinov2Config(**sizes))).eval()
    backbone.save_pretrained(tmp_path / "dino")  # no preprocessor_config.json: ImageNet mean/std, bicubic
    model = dino_model(tiny_clip, str(tmp_path / "dino"), memory_image_size=112)
    references = [render_normal("brute", f"ref{i}", 80) for i in range(3)]
    tests = [render_normal("brute", "test0", 80), render_sample("brute", "test1", 80, ("blob",)).image]
    model.add_category("brute", reference_images=[Image.fromarray(a) for a in references])
    with torch.no_grad():
        out = model(**model_inputs(model.config, [Image.fromarray(a) for a in tests]), mode="memory")

        def tokens(arrays):
            pixels = torch.from_numpy(np.stack([_array_pixels(a, 112) for a in arrays]))
            hidden = backbone(pixel_values=pixels).last_hidden_state[:, 1 + registers:]
            return hidden.double().numpy()

        bank = tokens(references).reshape(-1, sizes["hidden_size"])
        queries = tokens(tests)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    for index, patches in enumerate(queries):
        expected = []
        for patch in patches:
            patch = patch / np.linalg.norm(patch)
            expected.append(min(1.0 - float(np.dot(patch, row)) for row in bank))
        expected = np.array(expected)
        assert np.abs(out.memory_patch_scores[index].numpy() - expected).max() < 1e-5
        top = np.sort(expected)[::-1][: int(len(expected) * 0.01)]  # 256 patches: the top 2
        assert len(top) == 2
        assert abs(float(out.image_scores[index]) - top.mean()) < 1e-5


def _array_pixels(array: np.ndarray, size: int) -> np.ndarray:
    image = np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return ((image / 255.0 - np.array(IMAGENET[0], np.float32)) / np.array(IMAGENET[1], np.float32)).transpose(2, 0, 1)


def test_top_fraction_mean():
    distances = torch.arange(250, dtype=torch.float32).reshape(1, 250) / 250
    assert torch.allclose(top_fraction_mean(distances), torch.tensor([(249 + 248) / 500]))  # int(2.5) = 2
    few = torch.tensor([[0.1, 0.7, 0.3]])
    assert float(top_fraction_mean(few)) == pytest.approx(0.7)  # fewer than 100 patches: the largest


# ------------------------------------------------------------------------------------------- fused mode
@pytest.fixture
def dino_category(tiny_clip):
    model = dino_model(tiny_clip, str(GOLDEN / "tiny_dinov2"), memory_image_size=112)
    model.add_category("widget", reference_images=golden_paths(range(2), "train"))
    return model


def test_fused_mode_follows_the_packages_rule(dino_category):
    model = dino_category
    inputs = model_inputs(model.config, golden_paths(TEST_NAMES))
    with torch.no_grad():
        full = model(**inputs, output_size=64)
        memory = model(**inputs, mode="memory", output_size=64)
        text = model(**inputs, mode="text", output_size=64)
        features = model.encode_images(**inputs)
    # image: h(mean of the top 1 % DINO distances, text image score), h(a, b) = ab / (a + b)
    dino_image, text_image = memory.image_scores, text.image_scores
    assert torch.allclose(full.image_scores, dino_image * text_image / (dino_image + text_image), atol=1e-7)
    assert torch.equal(full.text_image_scores, text_image)
    # pixels: the text patch map (15 x 15 CLIP grid) bilinearly resampled to the finer DINO grid (8 x 8 here is
    # coarser, so the DINO map goes to 15 x 15), fused per patch, then upsampled and blurred as today
    text_patch = torch.softmax(model.temperature * features.patch_embeds @ model.text_prototypes()["pixel"].T, -1)[..., 1]
    assert text_patch.shape[-1] == 225 and memory.memory_patch_scores.shape[-1] == 64
    fine = upsample_patch_map(memory.memory_patch_scores, 15).flatten(1)
    sigma = model.config.gaussian_sigma * 64 / model.config.sigma_reference_size
    expected = smooth_upsample(harmonic_fusion(text_patch, fine), 64, sigma)
    assert torch.allclose(full.anomaly_maps, expected, atol=1e-6)
    assert torch.equal(full.memory_patch_scores, memory.memory_patch_scores)


def test_generated_defects_rank_above_normals_in_fused_mode(tiny_clip, tmp_path):
    # Random DINOv2 weights with DINOv2's initial layer scale (1e-5): the tokens stay close to the patch
    # embedding, local descriptors of the pixels, as trained features are; with the random CLIP text branch.
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=192,
                             patch_size=8, layerscale_value=1e-5)).save_pretrained(tmp_path / "dino")
    model = dino_model(tiny_clip, str(tmp_path / "dino"), memory_image_size=192)
    model.add_category("gear", reference_images=[Image.fromarray(render_normal("gear", f"train{i}", 192))
                                                 for i in range(6)])
    normals = [render_normal("gear", f"normal{i}", 192) for i in range(8)]
    defects = [render_sample("gear", f"defect{i}", 192, (kind,)).image
               for i, kind in enumerate(("scratch", "blob") * 4)]
    with torch.no_grad():
        out = model(**model_inputs(model.config, [Image.fromarray(a) for a in normals + defects]), output_size=192)
    assert out.text_image_scores is not None  # the fused mode: both branches
    scores = out.image_scores.numpy()
    assert scores[8:].min() > scores[:8].max(), scores  # every defect above every normal image
    defect_maps = out.anomaly_maps[8:].numpy()
    masks = [render_sample("gear", f"defect{i}", 192, (kind,)).mask > 0
             for i, kind in enumerate(("scratch", "blob") * 4)]
    for anomaly_map, mask in zip(defect_maps, masks):  # and the map is higher on the defect than off it
        assert anomaly_map[mask].mean() > anomaly_map[~mask].mean()


# ------------------------------------------------------------------------------------------- inputs
def test_processor_makes_both_inputs(dino_category, tiny_model):
    processor = AnomCLIPProcessor.from_model(dino_category)
    batch = processor(images=golden_paths(TEST_NAMES[:2]))
    assert batch["pixel_values"].shape == (2, 3, 30, 30)
    assert batch["memory_pixel_values"].shape == (2, 3, 112, 112)
    expected = torch.from_numpy(np.stack([_pixels(p, 112) for p in golden_paths(TEST_NAMES[:2])]))
    assert torch.allclose(batch["memory_pixel_values"], expected, atol=1e-6)
    assert "memory_pixel_values" not in AnomCLIPProcessor.from_model(tiny_model)(images=golden_paths(["good"]))


def test_missing_or_misshapen_memory_pixels_are_refused(dino_category):
    pixel_values = model_inputs(dino_category.config, golden_paths(["good"]))["pixel_values"]
    with pytest.raises(ValueError, match=r"memory_pixel_values \(batch 1, 3, 112, 112\).*from_model"):
        dino_category(pixel_values)
    with pytest.raises(ValueError, match=r"memory_pixel_values has shape \(1, 3, 224, 224\); expected.*112"):
        dino_category(pixel_values, memory_pixel_values=torch.zeros(1, 3, 224, 224))


def test_a_backbone_that_is_not_dinov2_is_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "clip_base")
    before = tiny_model.config.to_dict()
    with pytest.raises(ValueError, match=r"clip_base: config.json has model_type 'anomclip'.*DINOv2"):
        tiny_model.attach_memory_backbone(str(tmp_path / "clip_base"))
    assert tiny_model.memory_backbone is None and tiny_model.config.to_dict() == before


def test_a_size_off_the_patch_grid_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"memory_image_size=100 is not a multiple of the memory backbone's patch size 14"):
        tiny_model.attach_memory_backbone(str(GOLDEN / "tiny_dinov2"), image_size=100)
    assert tiny_model.memory_backbone is None and tiny_model.config.memory_backbone_config is None


def test_leave_one_out_thresholds_use_the_dino_memory(dino_category):
    model = dino_category
    references = model_inputs(model.config, golden_paths(range(2), "train"))
    estimate = model.estimate_thresholds(golden_paths(range(2), "train"))
    with torch.no_grad():  # each reference against the other's DINO patches, fused with its text score
        tokens = dino_patch_features(model.memory_backbone, references["memory_pixel_values"])
        text = model(**references, mode="text").image_scores
    for held_out, other in ((0, 1), (1, 0)):
        distances = 1 - (tokens[held_out] @ tokens[other].T).amax(dim=1)
        memory = distances.topk(int(distances.numel() * 0.01)).values.mean() if distances.numel() >= 100 \
            else distances.max()
        fused = memory * text[held_out] / (memory + text[held_out])
        assert estimate.leave_one_out_image_scores[held_out] == pytest.approx(float(fused), abs=1e-6)
    assert estimate.image == pytest.approx(1.1 * max(estimate.leave_one_out_image_scores))
    assert model.get_category().metadata["decision_threshold"] == estimate.image


# ------------------------------------------------------------------------------------------- adapters and bases
def test_adapter_records_the_backbone_and_round_trips(dino_category, tiny_clip, tmp_path):
    dino_category.save_category(tmp_path / "widget")
    record = json.loads((tmp_path / "widget" / "category.json").read_text())
    backbone = record["memory"]["backbone"]
    assert "dinov2" in backbone["name_or_path"] and backbone["model_type"] == "dinov2"
    assert backbone["architecture"]["image_size"] == 112 and record["memory"]["tap"] == "dinov2_final_norm"
    bank = load_file(str(tmp_path / "widget" / "memory_bank.safetensors"))
    assert {k: tuple(v.shape) for k, v in bank.items()} == {"layer_1": (2, 64, 16)}
    fresh = dino_model(tiny_clip, str(GOLDEN / "tiny_dinov2"), memory_image_size=112)
    fresh.load_category(tmp_path / "widget")
    inputs = model_inputs(fresh.config, golden_paths(TEST_NAMES))
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).image_scores, dino_category(**inputs).image_scores)


def test_saved_base_keeps_its_memory_backbone(dino_category, tmp_path):
    dino_category.save_pretrained(tmp_path / "base")
    loaded = AnomCLIPModel.from_pretrained(tmp_path / "base")
    assert loaded.has_dino_memory and loaded.config.memory_image_size == 112
    assert loaded.memory_backbone_identity() == dino_category.memory_backbone_identity()
    dino_category.save_category(tmp_path / "widget")
    loaded.load_category(tmp_path / "widget")
    inputs = model_inputs(loaded.config, golden_paths(TEST_NAMES))
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).anomaly_maps, dino_category(**inputs).anomaly_maps)
    # --memory-backbone on a base without one attaches it
    plain = AnomCLIPModel.from_base(tmp_path / "base", memory_backbone=str(GOLDEN / "tiny_dinov2_reg"))
    assert plain.config.memory_backbone_config["model_type"] == "dinov2_with_registers"


def test_onnx_export_holds_both_towers_and_matches_pytorch(dino_category, tmp_path):
    from anomclip_hf.export import OnnxAnomalyDetector, export_onnx

    exported = export_onnx(dino_category, str(tmp_path / "widget.onnx"), output_size=64)
    assert exported.check["max_abs_score_diff"] < 1e-4
    detector = OnnxAnomalyDetector(exported.path)
    paths = golden_paths(TEST_NAMES)
    inputs = detector.preprocess(paths)
    assert set(inputs) == {"pixel_values", "memory_pixel_values"}
    assert inputs["memory_pixel_values"].shape[-1] == dino_category.config.memory_image_size
    expected_inputs = model_inputs(dino_category.config, paths)
    for name, values in inputs.items():  # the torch-free preprocessing is the model's own
        np.testing.assert_allclose(values, expected_inputs[name].numpy(), atol=1e-6)
    with torch.no_grad():
        expected = dino_category(**expected_inputs, output_size=64)
    result = detector.predict(paths)
    np.testing.assert_allclose(result.image_scores, expected.image_scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(result.anomaly_maps, expected.anomaly_maps.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="memory_pixel_values is missing"):
        detector.run(inputs["pixel_values"])


# ------------------------------------------------------------------------------------------- command line
def test_cli_fit_predict_evaluate_with_a_memory_backbone(tiny_model, tmp_path, capsys):
    from anomclip_hf.cli import main
    from anomclip_hf.data.synthetic_trees import generate_mvtec_tree

    tiny_model.save_pretrained(tmp_path / "base")
    root = tmp_path / "data"
    generate_mvtec_tree(str(root), categories=["widget"], n_train=3, n_test_good=2, n_test_defect=1,
                        image_size=64, seed=1)
    backbone = str(GOLDEN / "tiny_dinov2")
    assert main(["fit", "--base", str(tmp_path / "base"), "--memory-backbone", backbone, "--references",
                 str(root / "widget" / "train" / "good"), "--category", "widget", "--output", str(tmp_path / "fit"),
                 "--epochs", "1", "--quiet"]) == 0  # memory_image_size 448 (the default)
    record = json.loads((tmp_path / "fit" / "adapter" / "category.json").read_text())
    assert record["memory"]["backbone"]["model_type"] == "dinov2"
    assert main(["predict", "--base", str(tmp_path / "base"), "--memory-backbone", backbone, "--category",
                 str(tmp_path / "fit" / "adapter"), "--images", str(root / "widget" / "test"), "--output",
                 str(tmp_path / "predict"), "--quiet"]) == 0
    assert (tmp_path / "predict" / "scores.csv").read_text().count("\n") == 1 + 2 + 3
    capsys.readouterr()
    assert main(["predict", "--base", str(tmp_path / "base"), "--category", str(tmp_path / "fit" / "adapter"),
                 "--images", str(root / "widget" / "test"), "--output", str(tmp_path / "p2"), "--quiet"]) != 0
    assert f"--memory-backbone {backbone}" in capsys.readouterr().err  # the same adapter on the base alone
    assert main(["evaluate", "--base", str(tmp_path / "base"), "--memory-backbone", backbone, "--mode", "memory",
                 "--no-train", "--dataset", "mvtec", "--data-root", str(root), "--shots", "1", "--seeds", "0",
                 "--output", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    assert "Scoring: DINOv2 memory alone" in (tmp_path / "eval" / "results.md").read_text()


def test_pipeline_scores_with_the_dino_memory(dino_category, tmp_path):
    from transformers import pipeline

    dino_category.save_pretrained(tmp_path / "base")
    dino_category.save_category(tmp_path / "widget")
    detector = pipeline("image-anomaly-detection", model=str(tmp_path / "base"), category=str(tmp_path / "widget"))
    results = detector(golden_paths(TEST_NAMES), batch_size=2)
    with torch.no_grad():
        expected = dino_category(**model_inputs(dino_category.config, golden_paths(TEST_NAMES)))
    assert [r["score"] for r in results] == pytest.approx(expected.image_scores.tolist(), abs=1e-6)
