"""Scores against values computed here from their definitions (docs/method/promptad.md, "Scoring"), not from the package's helpers.

Zero-shot text scores come from transformers' own `CLIPModel.get_text_features` / `get_image_features`;
the scoring modes' combination rules are rebuilt with torch's bilinear upsampling, a brute-force nearest
neighbour and scipy's Gaussian filter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

SCORING_SIZE = 400  # the reference's map size; sigma 4 there


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected feature; 4.x a tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _clip_text_features(model: AnomCLIPModel, prompts: list[str]) -> torch.Tensor:
    tokens = model.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return _features(model.clip.get_text_features(input_ids=tokens["input_ids"],
                                                  attention_mask=tokens["attention_mask"]))


# ----------------------------------------------------------------------------- zero-shot text scores


@pytest.mark.parametrize("text_temperature", [None, 7.5])
def test_zero_shot_scores_equal_softmax_of_clip_features(tiny_clip, text_temperature):
    model = AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                    text_temperature=text_temperature)
    model.add_category("bottle")  # no references, never trained: hand-written prompts, text mode
    pixel_values = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values)
        prompts = model.head_prompts("bottle", "image")
        assert prompts == model.head_prompts("bottle", "pixel") and prompts.learned == []
        assert prompts.normal == ["a photo of a bottle."] and prompts.manual[0] == "a photo of a damaged bottle."
        normal = _clip_text_features(model, prompts.normal)
        anomaly = _clip_text_features(model, prompts.manual)
        # spec: each prototype is the normalised mean of the UNnormalised prompt features
        n, a = F.normalize(normal.mean(0), dim=-1), F.normalize(anomaly.mean(0), dim=-1)
        g = F.normalize(_features(model.clip.get_image_features(pixel_values=pixel_values)), dim=-1)
        tau = float(tiny_clip.logit_scale) if text_temperature is None else text_temperature
        expected = torch.softmax(tau * torch.stack([g @ n, g @ a], dim=-1), dim=-1)[:, 1]
    for head in ("image", "pixel"):
        assert (model.text_prototypes("bottle")[head] - torch.stack([n, a])).abs().max() < 1e-5, head
    assert (out.image_scores - expected).abs().max() < 1e-5
    assert torch.equal(out.image_scores, out.text_image_scores) and out.memory_patch_scores is None
    # the test tells the two ways of averaging apart: the mean of normalised features is another prototype
    a_of_unit_features = F.normalize(F.normalize(anomaly, dim=-1).mean(0), dim=-1)
    assert (a_of_unit_features - a).abs().max() > 1e-4


# ----------------------------------------------------------------------------- the combination rule of each mode


def _upsample(patch_scores: torch.Tensor, size: int) -> torch.Tensor:
    side = int(round(patch_scores.shape[-1] ** 0.5))
    grid = patch_scores.double().reshape(-1, 1, side, side)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _blur(maps: torch.Tensor, size: int) -> np.ndarray:
    sigma = 4.0 * size / 400
    return np.stack([ndimage.gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in maps.numpy()])


def _memory_patch_scores(model: AnomCLIPModel, features) -> torch.Tensor:
    """Mean over the memory layers of the min over every reference patch of (1 - cos) / 2, brute force."""
    per_layer = []
    for query, bank in zip(features.memory_features, model.get_category().memory_bank):
        query = F.normalize(query.double(), dim=-1)  # (B, P, W)
        bank = F.normalize(bank.double().reshape(-1, bank.shape[-1]), dim=-1)  # (k*P, W)
        cosine = torch.einsum("bpw,kw->bpk", query, bank)
        per_layer.append(((1 - cosine) / 2).min(dim=-1).values)
    return torch.stack(per_layer).mean(0)


def _text_probability(features: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.softmax(tau * features.double() @ prototypes.double().T, dim=-1)[..., 1]


@pytest.fixture
def referenced_model(tiny_model):
    generator = torch.Generator().manual_seed(0)
    tiny_model.add_category("bottle", reference_images=torch.randn(2, 3, 30, 30, generator=generator))
    return tiny_model


@pytest.mark.parametrize("mode", ["memory", "full", "text"])
def test_each_scoring_mode_combines_as_the_spec_says(referenced_model, mode):
    model = referenced_model
    pixel_values = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(pixel_values, mode=mode, output_size=SCORING_SIZE)
        features = model.encode_images(pixel_values)
        prototypes = model.text_prototypes()
    visual = _memory_patch_scores(model, features)
    peak = _upsample(visual, SCORING_SIZE).flatten(1).max(dim=1).values  # un-blurred
    text_patch = _text_probability(features.patch_embeds, prototypes["pixel"], model.temperature)
    text_image = _text_probability(features.global_embeds, prototypes["image"], model.temperature)
    if mode == "memory":
        expected_scores, patch_map = peak, visual
    elif mode == "full":
        b = out.text_image_scores.double()
        assert (b - text_image).abs().max() < 1e-6
        expected_scores, patch_map = peak * b / (peak + b), text_patch * visual / (text_patch + visual)
    else:
        expected_scores, patch_map = text_image, text_patch
    if mode != "text":
        assert (out.memory_patch_scores.double() - visual).abs().max() < 1e-6
    assert out.anomaly_maps.shape == (3, SCORING_SIZE, SCORING_SIZE)
    assert (out.image_scores.double() - expected_scores).abs().max() < 1e-6
    expected_maps = _blur(_upsample(patch_map, SCORING_SIZE), SCORING_SIZE)
    assert np.abs(out.anomaly_maps.numpy() - expected_maps).max() < 1e-6
