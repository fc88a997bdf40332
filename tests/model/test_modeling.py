"""AnomCLIPModel behaviour: gradients, score ranges, defect detection, round trips, bad input."""

import numpy as np
import pytest
import torch
from tiny_models import perturb_norms, tiny_clip_config
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModel, CLIPModel

from anomclip_hf import AnomCLIPConfig, AnomCLIPModel, AnomCLIPProcessor
from anomclip_hf.model.losses import promptad_loss
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer


def _object_image(seed: int = 0, defect: bool = False) -> Image.Image:
    """A textured disc on a gradient; the defect is a thick dark scratch in the lower right quarter."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:120, 0:120]
    base = np.stack([x * 1.5, y * 1.2 + 40, 200 - x], axis=-1) + rng.normal(0, 2, (120, 120, 3))
    disc = (x - 60) ** 2 + (y - 60) ** 2 < 45 ** 2
    base[disc] = [180, 160, 90] + 25 * np.sin((x[disc] + y[disc]) / 4.0)[:, None]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    if defect:
        ImageDraw.Draw(image).line([(70, 75), (105, 110)], fill=(10, 10, 10), width=10)
    return image


def _defect_mask_at(size: int) -> np.ndarray:
    mask = Image.new("L", (120, 120))
    ImageDraw.Draw(mask).line([(70, 75), (105, 110)], fill=255, width=10)
    return np.asarray(mask.resize((size, size), Image.NEAREST)) > 0


@pytest.fixture
def bottle_model(tiny_model):
    tiny_model.add_category("bottle", reference_images=[_object_image(0), _object_image(1)])
    return tiny_model


def test_only_prompt_vectors_receive_gradients(tiny_model):
    tiny_model.add_category("bottle", reference_images=[_object_image(0)], learned_prompts=True)
    before = {k: v.clone() for k, v in tiny_model.clip.state_dict().items()}
    vectors = tiny_model.prompt_parameters("bottle")
    optimizer = torch.optim.SGD(vectors, lr=0.1, momentum=0.9)
    pixel_values = AnomCLIPProcessor.from_model(tiny_model)(images=[_object_image(0)])["pixel_values"]
    features = tiny_model.encode_images(pixel_values)
    loss = promptad_loss(features.global_embeds, tiny_model.encode_prompts("bottle", "image"),
                         tiny_model.temperature, use_margin=True)["loss"]
    loss.backward()
    trainable = [name for name, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable == ["category_bank.prompt_tokens.token_embedding.trainable_tokens_delta.bottle"]
    assert all(p.grad is None for p in tiny_model.clip.parameters())
    start = vectors[0].detach().clone()
    optimizer.step()
    assert not torch.equal(start, vectors[0])
    for key, value in tiny_model.clip.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_scores_finite_in_unit_interval_and_detect_defect(bottle_model):
    processor = AnomCLIPProcessor.from_model(bottle_model)
    images = [_object_image(0), _object_image(0, defect=True), _object_image(5)]
    with torch.no_grad():
        out = bottle_model(**processor(images=images))
    assert out.image_scores.shape == (3,) and out.anomaly_maps.shape == (3, 30, 30)
    for tensor in (out.image_scores, out.anomaly_maps):
        assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1
    # the image identical to a reference scores lower than the same image with a defect drawn in
    assert out.image_scores[0] < out.image_scores[1]
    defect = torch.from_numpy(_defect_mask_at(30))
    defect_map = out.anomaly_maps[1]
    assert defect_map[defect].mean() > 2 * defect_map[~defect].mean()
    assert defect_map[defect].mean() > out.anomaly_maps[0][defect].mean()


@pytest.mark.parametrize("mode", ["full", "memory", "text"])
def test_scoring_modes(bottle_model, mode):
    pixel_values = AnomCLIPProcessor.from_model(bottle_model)(images=[_object_image(0, defect=True)])["pixel_values"]
    with torch.no_grad():
        out = bottle_model(pixel_values, mode=mode, output_size=48)
    assert out.anomaly_maps.shape == (1, 48, 48)
    assert (out.memory_patch_scores is None) == (mode == "text")
    assert (out.text_image_scores is None) == (mode == "memory")
    assert 0 <= float(out.image_scores[0]) <= 1


def test_zero_shot_category_without_references(tiny_model):
    tiny_model.add_category("screw")  # no references: text-only with hand-written prompts
    pixel_values = torch.zeros(2, 3, 30, 30)
    with torch.no_grad():
        out = tiny_model(pixel_values)
    assert torch.allclose(out.image_scores, out.text_image_scores)
    assert tiny_model.head_prompts("screw", "image").normal == ["a photo of a screw."]
    with pytest.raises(ValueError, match="needs reference images"):
        tiny_model(pixel_values, mode="memory")


def test_model_round_trip_and_automodel(tmp_path, bottle_model):
    pixel_values = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        expected = bottle_model(pixel_values)
    bottle_model.save_pretrained(tmp_path / "base")
    bottle_model.save_category(tmp_path / "bottle")
    assert sorted(p.name for p in (tmp_path / "bottle").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "category.json", "memory_bank.safetensors",
        "text_prototypes.safetensors"]
    for loader in (AnomCLIPModel.from_pretrained, AutoModel.from_pretrained):
        reloaded = loader(tmp_path / "base")
        assert isinstance(reloaded, AnomCLIPModel)
        assert reloaded.config.prompt_token_ids == bottle_model.config.prompt_token_ids
        reloaded.load_category(str(tmp_path / "bottle"))
        with torch.no_grad():
            out = reloaded(pixel_values)
        assert torch.equal(out.image_scores, expected.image_scores)
        assert torch.equal(out.anomaly_maps, expected.anomaly_maps)
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "base"), AnomCLIPConfig)


def test_learned_category_round_trip_uses_cached_prototypes(tmp_path, tiny_model):
    tiny_model.add_category("bottle", reference_images=[_object_image(0)], learned_prompts=True, seed=3)
    with torch.no_grad():
        tiny_model.prompt_parameters()[0].add_(0.05)
    tiny_model.clear_prototype_cache()
    pixel_values = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        expected = tiny_model(pixel_values)
    tiny_model.save_category(tmp_path / "bottle")
    fresh = AnomCLIPModel.from_clip(tiny_model.clip, tokenizer=tiny_model.tokenizer)
    fresh.load_category(str(tmp_path / "bottle"))
    state = fresh.get_category("bottle")
    assert state.learned_prompts and set(state.prototypes) == {"image", "pixel"}
    assert torch.equal(fresh.prompt_parameters()[0], tiny_model.prompt_parameters()[0])
    with torch.no_grad():
        assert torch.equal(fresh(pixel_values).image_scores, expected.image_scores)


def test_several_categories_switch(tiny_model):
    tiny_model.add_category("bottle", reference_images=[_object_image(0)])
    tiny_model.add_category("cable", reference_images=[_object_image(3)], activate=False)
    assert tiny_model.categories == ["bottle", "cable"] and tiny_model.active_category == "bottle"
    pixel_values = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        bottle = tiny_model(pixel_values).image_scores
        cable = tiny_model(pixel_values, category="cable").image_scores
        tiny_model.set_category("cable")
        assert torch.equal(tiny_model(pixel_values).image_scores, cable)
    assert not torch.equal(bottle, cable)


def test_adapter_for_another_base_model_is_refused(tmp_path, bottle_model):
    bottle_model.save_category(tmp_path / "bottle")
    torch.manual_seed(1)
    other_clip = perturb_norms(CLIPModel(tiny_clip_config()), seed=1)
    other = AnomCLIPModel.from_clip(other_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    with pytest.raises(ValueError, match="adapter was made for base model"):
        other.load_category(str(tmp_path / "bottle"))
    assert other.categories == []


def test_save_category_is_atomic(tmp_path, bottle_model, monkeypatch):
    target = tmp_path / "bottle"
    bottle_model.save_category(target)
    before = (target / "category.json").read_text()
    import anomclip_hf.model.category_io as category_io

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(category_io, "render_category_card", broken_card)
    bottle_model.get_category().class_name = "changed"
    with pytest.raises(RuntimeError, match="disk full"):
        bottle_model.save_category(target)
    assert (target / "category.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bottle"]


def test_bad_input_gives_clear_errors(bottle_model, tmp_path):
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 30, 30\)"):
        bottle_model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 30, 30\)"):
        bottle_model(torch.zeros(1, 4, 30, 30))
    nan = torch.zeros(1, 3, 30, 30)
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        bottle_model(nan)
    with pytest.raises(ValueError, match="unknown category 'carpet'"):
        bottle_model(torch.zeros(1, 3, 30, 30), category="carpet")
    with pytest.raises(ValueError, match="reference_images is empty"):
        bottle_model.add_category("grid", reference_images=[])
    with pytest.raises(ValueError, match="not a category adapter folder"):
        bottle_model.load_category(str(tmp_path))


def test_memory_layer_defaults_scale_with_depth():
    assert AnomCLIPConfig(clip_config=tiny_clip_config(layers=12)).memory_layers == [3, 8]
    assert AnomCLIPConfig(clip_config=tiny_clip_config(layers=24)).memory_layers == [6, 16]
    with pytest.raises(ValueError, match="anomaly_token_position"):
        AnomCLIPConfig(clip_config=tiny_clip_config(), anomaly_token_position="middle")
    with pytest.raises(ValueError, match="memory_layers"):
        AnomCLIPConfig(clip_config=tiny_clip_config(), memory_layers=[5])


def test_from_clip_folder_matches_object_and_processor_from_clip(tmp_path, tiny_clip):
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    tiny_clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    from_folder = AnomCLIPModel.from_clip(str(tmp_path / "clip"))
    from_object = AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    assert from_folder.config.base_model_name_or_path == str(tmp_path / "clip")
    assert from_folder.config.prompt_token_ids == from_object.config.prompt_token_ids
    processor = AnomCLIPProcessor.from_clip(str(tmp_path / "clip"))
    assert processor.image_size == 30
    pixel_values = processor(images=[_object_image(2)])["pixel_values"]
    with torch.no_grad():
        a = from_folder.encode_images(pixel_values).patch_embeds
        b = from_object.encode_images(pixel_values).patch_embeds
    assert torch.equal(a, b)
    assert AnomCLIPModel.from_base(str(tmp_path / "clip")).config.prompt_token_ids == from_object.config.prompt_token_ids


def test_config_round_trip_keeps_every_setting(tmp_path):
    config = AnomCLIPConfig(clip_config=tiny_clip_config(), text_temperature=100.0, n_ctx=2, vv_layers=[1],
                            memory_layers=[0, 1], memory_tap="block_output", anomaly_token_position="before_class",
                            output_size=64, category_phrases=False)
    config.save_pretrained(tmp_path)
    loaded = AnomCLIPConfig.from_pretrained(tmp_path)
    for key in ("text_temperature", "n_ctx", "vv_layers", "memory_layers", "memory_tap", "anomaly_token_position",
                "output_size", "category_phrases"):
        assert getattr(loaded, key) == getattr(config, key), key
    assert loaded.clip_config.vision_config.hidden_size == 32
