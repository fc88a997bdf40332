"""The "memory" mode of a DINOv2 memory computes only what it needs: no CLIP vision tower, the same scores as
the full encoding; and add_category takes the processor's dict of both pixel tensors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from anomclip_hf import AnomCLIPModel
from anomclip_hf.memory.dino import top_fraction_mean
from anomclip_hf.model.processing_anomclip import model_inputs
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

GOLDEN = Path(__file__).parents[1] / "golden" / "dino"


def _paths(names, prefix):
    return [str(GOLDEN / "images" / f"{prefix}_{name}.png") for name in names]


@pytest.fixture
def dino_model(tiny_clip):
    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                   memory_backbone=str(GOLDEN / "tiny_dinov2"), memory_image_size=112)


def test_memory_mode_skips_the_clip_tower_and_keeps_the_scores(dino_model):
    model = dino_model
    model.add_category("widget", reference_images=_paths(range(2), "train"))
    inputs = model_inputs(model.config, _paths(("good", "scratch", "blob"), "test"))
    calls = []
    hook = model.clip.vision_model.embeddings.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            memory = model(**inputs, mode="memory", output_size=64)
            assert calls == []  # the CLIP vision tower never ran
            # today's path: both towers encoded, then scored in memory mode
            reference = model.score_features(model.encode_images(**inputs), output_size=64, mode="memory")
            assert len(calls) == 1
    finally:
        hook.remove()
    assert torch.equal(memory.image_scores, reference.image_scores)
    assert torch.equal(memory.anomaly_maps, reference.anomaly_maps)
    assert torch.equal(memory.memory_patch_scores, reference.memory_patch_scores)
    assert memory.text_image_scores is None
    # an independent recomputation: 1 - cos to the nearest reference patch, image = top 1 % mean
    features = model.encode_memory(inputs["memory_pixel_values"])
    bank = model.get_category("widget").memory_bank[0].reshape(-1, features.shape[-1])
    distances = 1 - (features @ bank.T).amax(dim=-1)
    assert torch.allclose(memory.memory_patch_scores, distances, atol=1e-6)
    assert torch.allclose(memory.image_scores, top_fraction_mean(distances), atol=1e-6)


def test_clip_tower_off_needs_a_dino_memory(tiny_model):
    pixels = torch.zeros(1, 3, tiny_model.config.image_size, tiny_model.config.image_size)
    with pytest.raises(ValueError, match="clip_tower=False needs a DINOv2 memory"):
        tiny_model.encode_images(pixels, clip_tower=False)


def test_add_category_takes_the_processors_dict(dino_model):
    model = dino_model
    inputs = model_inputs(model.config, _paths(range(2), "train"))
    assert set(inputs) == {"pixel_values", "memory_pixel_values"}
    model.add_category("from_dict", reference_images=dict(inputs))
    model.add_category("from_paths", reference_images=_paths(range(2), "train"))
    from_dict = model.get_category("from_dict").memory_bank[0]
    assert from_dict.shape == (2, 64, model.memory_backbone.config.hidden_size)
    assert torch.allclose(from_dict, model.get_category("from_paths").memory_bank[0], atol=1e-6)
    with pytest.raises(ValueError, match="reference_images is empty"):
        model.add_category("empty", reference_images={"pixel_values": inputs["pixel_values"][:0],
                                                      "memory_pixel_values": inputs["memory_pixel_values"][:0]})
