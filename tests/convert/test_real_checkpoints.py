"""CLIP folders shaped like the Hub's own (tests/clip_folders.py: OpenAI's legacy text ids and processor, float16
weights, sharded weights) work end to end: text, references, fit, predict, the pipeline and train.py."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_folders import write_clip_folder
from PIL import Image
from transformers import AutoProcessor, CLIPModel, SiglipConfig, pipeline

from anomclip_hf import AnomCLIPModel, AnomCLIPProcessor
from anomclip_hf.cli import main
from anomclip_hf.data import generate_mvtec_tree
from anomclip_hf.model.dtypes import resolve_compute_dtype
from anomclip_hf.model.processing_anomclip import model_pixel_values

REPO = Path(__file__).resolve().parents[2]
FLAVOURS = {"openai": {}, "float16": {"dtype": torch.float16}, "sharded": {"max_shard_size": "20KB"}}
PLAIN_PROMPTS = ["a photo of a bottle.", "damaged bottle", "x", "a much longer prompt about a hazelnut with a crack"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip-folders")
    return {name: write_clip_folder(root / name, **kwargs) for name, kwargs in FLAVOURS.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, list[Path]]:
    """Non-square RGB pictures: 4 normal references, 2 test images (one with a bright blotch)."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    files = {"references": [], "test": []}
    for split, count in (("references", 4), ("test", 2)):
        (root / split).mkdir()
        for index in range(count):
            pixels = (100 + 20 * rng.standard_normal((40, 52, 3))).clip(0, 255).astype(np.uint8)
            if split == "test" and index == 1:
                pixels[10:22, 14:30] = 250
            path = root / split / f"{split}_{index}.png"
            Image.fromarray(pixels).save(path)
            files[split].append(path)
    return files


def _float32_clip(folder: Path) -> CLIPModel:
    return CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_text_features_pool_at_the_tokenizer_eos_and_equal_get_text_features(folders, flavour):
    folder = folders[flavour]
    model = AnomCLIPModel.from_clip(str(folder))
    assert json.loads((folder / "config.json").read_text())["text_config"]["eos_token_id"] == 2  # legacy field
    assert model.config.text_eos_token_id == model.tokenizer.eos_token_id == model.text_eos_token_id != 2
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id  # OpenAI's tokenizer pads with EOS
    model.add_category("bottle")
    with torch.no_grad():
        ours = model.encode_prompt_texts("bottle", PLAIN_PROMPTS)
        ids = model.tokenizer(PLAIN_PROMPTS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        reference = _float32_clip(folder).get_text_features(input_ids=ids)
    reference = getattr(reference, "pooler_output", reference)
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max() < 1e-5


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_zero_shot_and_reference_categories_score(folders, images, flavour):
    model = AnomCLIPModel.from_clip(str(folders[flavour]))
    assert model.clip.dtype == torch.float32  # the CPU policy, whatever the dtype on disk
    processor = AnomCLIPProcessor.from_clip(str(folders[flavour]))
    pixel_values = processor(images=[Image.open(p) for p in images["test"]])["pixel_values"]
    model.add_category("bottle")
    with torch.no_grad():
        text = model(pixel_values)
    assert text.image_scores.shape == (2,) and bool(((text.image_scores >= 0) & (text.image_scores <= 1)).all())
    model.add_category("bottle", reference_images=[Image.open(p) for p in images["references"]])
    bank = model.get_category().memory_bank
    assert all(layer.dtype == torch.float32 and layer.shape[0] == 4 for layer in bank)
    with torch.no_grad():
        full = model(pixel_values)
    assert torch.isfinite(full.anomaly_maps).all() and full.image_scores[1] > full.image_scores[0]
    assert model.text_prototypes()["image"].dtype == torch.float32


def test_single_and_sharded_folders_load_the_same_weights(folders):
    single, sharded = (AnomCLIPModel.from_clip(str(folders[name])) for name in ("openai", "sharded"))
    assert (folders["sharded"] / "model.safetensors.index.json").exists()
    for (name, a), (_, b) in zip(single.clip.state_dict().items(), sharded.clip.state_dict().items()):
        assert torch.equal(a, b), name


def test_sharded_anomclip_base_round_trips(folders, tmp_path):
    model = AnomCLIPModel.from_clip(str(folders["openai"]))
    model.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").exists()
    loaded = AnomCLIPModel.from_pretrained(tmp_path / "base")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model.encode_images(pixel_values), loaded.encode_images(pixel_values)
    assert torch.equal(a.global_embeds, b.global_embeds)
    assert loaded.config.text_eos_token_id == model.config.text_eos_token_id
    assert loaded.config.image_mean == model.config.image_mean


def test_float16_weights_compute_in_the_requested_dtype_with_float32_state(folders, images, tmp_path):
    assert resolve_compute_dtype(torch.float16, "cpu") == torch.float32
    assert resolve_compute_dtype(torch.float16, "cuda") == torch.float16
    assert resolve_compute_dtype(torch.bfloat16, "cuda:0") == torch.bfloat16
    assert resolve_compute_dtype(torch.float32, "cuda", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="float8"):
        resolve_compute_dtype(torch.float32, "cpu", "float8")
    reference = AnomCLIPModel.from_clip(str(folders["float16"]))
    for dtype in (torch.float16, torch.bfloat16):
        model = AnomCLIPModel.from_clip(str(folders["float16"]), torch_dtype=dtype)
        assert model.clip.dtype == dtype
        model.add_category("bottle", reference_images=[Image.open(p) for p in images["references"]],
                           learned_prompts=True)
        assert model.prompt_parameters()[0].dtype == torch.float32
        assert all(layer.dtype == torch.float32 for layer in model.get_category().memory_bank)
        pixel_values = model_pixel_values(model.config, [Image.open(p) for p in images["test"]])
        with torch.no_grad():
            out = model(pixel_values)
            features = model.encode_images(pixel_values)
            exact = reference.encode_images(pixel_values)
        assert model.text_prototypes()["pixel"].dtype == torch.float32
        assert features.global_embeds.dtype == torch.float32 and torch.isfinite(out.image_scores).all()
        # half-precision towers: the features agree with the float32 computation to their precision
        assert (features.global_embeds - exact.global_embeds).abs().max() < 0.05
    # a base saved in float16 loads onto the CPU in float32, with float32 prompt vectors
    model.save_pretrained(tmp_path / "base16")
    loaded = AnomCLIPModel.from_pretrained(tmp_path / "base16")
    assert loaded.clip.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in loaded.category_bank.prompt_tokens.parameters())
    assert AnomCLIPModel.from_pretrained(tmp_path / "base16", torch_dtype="bfloat16").clip.dtype == torch.bfloat16


def test_image_score_is_defined_at_the_scoring_size(folders, images):
    model = AnomCLIPModel.from_clip(str(folders["openai"]))
    references = [Image.open(p) for p in images["references"]]
    model.add_category("bottle", reference_images=references)
    pixel_values = model_pixel_values(model.config, [Image.open(p) for p in images["test"]])
    with torch.no_grad():
        outputs = {size: model(pixel_values, output_size=size) for size in (28, 240, 400, 800)}
        memory = {size: model(pixel_values, output_size=size, mode="memory").image_scores for size in (28, 800)}
    for size, out in outputs.items():
        assert out.anomaly_maps.shape == (2, size, size)
        assert (out.image_scores - outputs[400].image_scores).abs().max() < 1e-6, size
    assert (memory[28] - memory[800]).abs().max() < 1e-6
    # the peak at 28 differs from the one at the scoring size: the fixed size is what makes them equal
    from anomclip_hf.model.scoring import upsampled_peak

    patch = outputs[400].memory_patch_scores
    assert (upsampled_peak(patch, 400) - memory[28]).abs().max() < 1e-6
    # thresholds: the same whatever default map size the config asks for
    estimates = []
    for size in (28, 800):
        model.config.output_size = size
        estimates.append(model.estimate_thresholds(references))
    assert estimates[0] == estimates[1]


def test_processor_and_model_preprocessing_agree_on_checkpoint_normalisation(tmp_path, images):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    folder = write_clip_folder(tmp_path / "custom", mean=mean, std=std)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings["resample"] = 2  # bilinear
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    model = AnomCLIPModel.from_clip(str(folder))
    assert model.config.image_mean == list(mean) and model.config.image_std == list(std)
    assert model.config.image_resample == 2
    pictures = [Image.open(p) for p in images["references"]]
    expected = torch.stack([torch.from_numpy((np.asarray(p.convert("RGB").resize((32, 32), Image.BILINEAR),
                                                         dtype=np.float32) / 255 - np.float32(mean)) / np.float32(std))
                            .permute(2, 0, 1) for p in pictures])
    from_clip = AnomCLIPProcessor.from_clip(str(folder))(images=pictures)["pixel_values"]
    from_model = AnomCLIPProcessor.from_model(model)(images=pictures)["pixel_values"]
    internal = model_pixel_values(model.config, pictures)
    assert torch.equal(from_clip, internal) and torch.equal(from_model, internal)
    assert (internal - expected).abs().max() < 1e-5
    # add_category with PIL images preprocesses as the processor does
    model.add_category("a", reference_images=pictures)
    model.add_category("b", reference_images=from_clip)
    for x, y in zip(model.get_category("a").memory_bank, model.get_category("b").memory_bank):
        assert torch.equal(x, y)
    # a saved base: AutoProcessor gives the AnomCLIP processor with the same values
    model.save_pretrained(tmp_path / "base")
    auto = AutoProcessor.from_pretrained(str(tmp_path / "base"))
    assert isinstance(auto, AnomCLIPProcessor)
    assert torch.equal(auto(images=pictures)["pixel_values"], internal)


def test_older_base_without_the_eos_field_pools_at_the_tokenizer_eos(folders, tmp_path):
    model = AnomCLIPModel.from_clip(str(folders["openai"]))
    model.add_category("bottle")
    with torch.no_grad():
        expected = model.encode_prompt_texts("bottle", PLAIN_PROMPTS)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["text_eos_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AnomCLIPModel.from_pretrained(tmp_path)
    assert loaded.config.text_eos_token_id == loaded.tokenizer.eos_token_id
    loaded.add_category("bottle")
    with torch.no_grad():
        assert torch.equal(loaded.encode_prompt_texts("bottle", PLAIN_PROMPTS), expected)


@pytest.mark.parametrize("model_type,config", [("siglip", SiglipConfig()), ("bert", None)])
def test_a_tower_clip_cannot_represent_is_refused_by_name(tmp_path, model_type, config):
    if config is not None:
        config.save_pretrained(tmp_path)
    else:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 8}))
    with pytest.raises(ValueError, match=f"model_type '{model_type}'"):
        AnomCLIPModel.from_clip(str(tmp_path))
    with pytest.raises(ValueError, match=f"model_type '{model_type}'"):
        AnomCLIPModel.from_base(str(tmp_path))


def test_revision_loads_that_commit_from_the_hub(fake_hub, tmp_path):
    files = {}
    for seed in (0, 1):
        folder = write_clip_folder(tmp_path / f"seed{seed}", max_shard_size="20KB", seed=seed)
        files[seed] = fake_hub.put_files("user/clip-tiny", {p.name: p.read_bytes() for p in folder.iterdir()},
                                         message=f"seed {seed}")
    pinned = AnomCLIPModel.from_clip("user/clip-tiny", revision=files[0])
    latest = AnomCLIPModel.from_clip("user/clip-tiny")
    local = AnomCLIPModel.from_clip(str(tmp_path / "seed0"))
    assert pinned.config.base_model_revision == files[0]
    assert torch.equal(pinned.clip.visual_projection.weight, local.clip.visual_projection.weight)
    assert not torch.equal(latest.clip.visual_projection.weight, local.clip.visual_projection.weight)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fit_predict_and_pipeline(folders, images, tmp_path, flavour):
    base = str(folders[flavour])
    references = images["references"][0].parent
    assert main(["fit", "--base", base, "--references", str(references), "--category", "widget",
                 "--output", str(tmp_path / "fit"), "--epochs", "1", "--no-progress"]) == 0
    adapter = tmp_path / "fit" / "adapter"
    record = json.loads((adapter / "category.json").read_text())
    assert record["shots"] == 4 and record["learned_prompts"]
    assert main(["predict", "--base", base, "--category", str(adapter), "--images", str(images["test"][0].parent),
                 "--output", str(tmp_path / "pred"), "--quiet"]) == 0
    rows = {Path(r["path"]).name: float(r["image_score"]) for r in csv.DictReader(open(tmp_path / "pred" / "scores.csv"))}
    assert sorted(rows) == ["test_0.png", "test_1.png"]
    # the pipeline takes AnomCLIP bases or loaded models; a CLIP folder goes through from_base as in predict
    detector = pipeline("image-anomaly-detection", model=AnomCLIPModel.from_base(base), category=str(adapter))
    for path in images["test"]:
        result = detector(str(path))
        assert abs(result["score"] - rows[path.name]) < 1e-5  # the same preprocessing and scores as predict
        assert result["anomaly_map"].shape == (32, 32)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_train_script_runs(folders, tmp_path, flavour):
    spec = importlib.util.spec_from_file_location("train_script", REPO / "training" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = generate_mvtec_tree(str(tmp_path / "data"), categories=("widget",), n_train=2, n_test_good=1,
                               n_test_defect=1, image_size=32)
    out = tmp_path / "out"
    assert script.main(["--base", str(folders[flavour]), "--dataset", "mvtec", "--data-root", data, "--category",
                        "widget", "--shots", "2", "--seed", "0", "--output-dir", str(out), "--epochs", "1",
                        "--no-progress"]) == 0
    record = json.loads((out / "mvtec" / "widget" / "2shot" / "seed0" / "adapter" / "category.json").read_text())
    assert record["base_model"]["name_or_path"] == str(folders[flavour]) and record["learned_prompts"]


def test_from_clip_wraps_the_loaded_weights_without_a_copy(tiny_clip):
    import copy

    from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

    clip = copy.deepcopy(tiny_clip)
    before = {name: tensor.clone() for name, tensor in clip.state_dict().items()}
    model = AnomCLIPModel.from_clip(clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    assert model.clip is clip  # one copy of CLIP: the wrapper holds the loaded module itself
    for name, tensor in model.clip.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # and wrapping re-initialised nothing
    assert not any(p.requires_grad for p in model.clip.parameters())
