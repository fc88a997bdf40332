"""A good category adapter on the tiny CLIP, and the checks hostile-adapter tests share."""

from __future__ import annotations

import torch

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

PATCHES, WIDTH = 225, 32  # tiny CLIP: (30 / 2)^2 patches, width 32


def fresh_model(tiny_clip) -> AnomCLIPModel:
    return AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))


def scores_of(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values, category="widget")
    return out.image_scores.clone(), out.anomaly_maps.clone()


def assert_unchanged(loaded, pixel_values):
    """The loaded good "widget" still alone, with its vectors, its scores to the bit and its threshold."""
    model, (image_scores, maps) = loaded
    assert model.categories == ["widget"] and model.category_bank.prompt_tokens.adapter_names == ["widget"]
    now = scores_of(model, pixel_values)
    assert torch.equal(now[0], image_scores) and torch.equal(now[1], maps)
    assert model.get_category("widget").metadata["decision_threshold"] is not None


def fake_features(k):
    from anomclip_hf.model.vv_attention import VisionFeatures

    return VisionFeatures(torch.zeros(k, 16), torch.zeros(k, PATCHES, 16), [torch.zeros(k, PATCHES, WIDTH)] * 2)
