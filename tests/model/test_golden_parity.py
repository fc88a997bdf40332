"""Parity with the PromptAD reference code on the golden tiny model (tolerances from its README)."""

import pytest
import torch
from golden_setup import HEAD_SETTINGS, golden_model

from anomclip_hf.model.text_encoding import eos_positions_of

TOL = 1e-5


@pytest.fixture(scope="module")
def model(golden_clip, real_tokenizer, golden):
    return golden_model(golden_clip, real_tokenizer, golden)


def test_features(model, golden):
    with torch.no_grad():
        features = model.encode_images(golden["images"]["pixel_values"])
    reference = golden["features"]
    assert (features.global_embeds - reference["global"]).abs().max() < TOL
    assert (features.patch_embeds - reference["patch_vv"]).abs().max() < TOL
    assert (features.memory_features[0] - reference["mid1"]).abs().max() < TOL
    assert (features.memory_features[1] - reference["mid2"]).abs().max() < TOL


@pytest.mark.parametrize("head,setting", HEAD_SETTINGS)
def test_prompt_token_layout(model, golden, head, setting):
    """Same ids as the reference at every position; its placeholders 'n'/'a' are our prompt tokens."""
    prompts = model.head_prompts("bottle", head)
    text = golden["text"][setting]
    prompt_ids = set(model.config.prompt_token_ids)
    placeholder = {333, 320}  # 'n' and 'a' in the reference's source strings
    for ours_texts, reference in ((prompts.normal, text["tokens_normal"]), (prompts.manual,
                                  text["tokens_abnormal_handle"]), (prompts.learned, text["tokens_abnormal_learned"])):
        ours = model.tokenize_prompts(ours_texts)
        assert ours.shape == reference.shape
        # Compare through EOS: after it, the reference pads with 0 and HF's CLIP tokenizer with EOS.
        eos = model.text_eos_token_id
        positions = torch.arange(reference.shape[1])
        in_prompt = positions <= eos_positions_of(reference, eos).unsqueeze(1)
        assert torch.equal(eos_positions_of(ours, eos), eos_positions_of(reference, eos))
        is_placeholder = torch.isin(reference, torch.tensor(sorted(placeholder))) & in_prompt
        assert bool(torch.isin(ours[is_placeholder], torch.tensor(sorted(prompt_ids))).all())
        assert torch.equal(ours[in_prompt & ~is_placeholder], reference[in_prompt & ~is_placeholder])
    # the learned anomaly vector sits before the class name in the reference preset
    assert prompts.learned[0].endswith("<img_a0_0> bottle." if head == "image" else "<pix_a0_0> bottle.")


@pytest.mark.parametrize("head,setting", HEAD_SETTINGS)
def test_text_features_and_prototypes(model, golden, head, setting):
    with torch.no_grad():
        features = model.encode_prompts("bottle", head)
    text = golden["text"][setting]
    assert (features.normal - text["feat_normal"]).abs().max() < TOL
    assert (features.manual - text["feat_abnormal_handle"]).abs().max() < TOL
    assert (features.learned - text["feat_abnormal_learned"]).abs().max() < TOL
    assert (features.prototypes() - text["prototypes"]).abs().max() < TOL


def test_scores_and_maps(model, golden):
    test_images = golden["images"]["pixel_values"][golden["images"]["test_idx"]]
    with torch.no_grad():
        out = model(test_images, output_size=400)
    scores = golden["scores"]
    assert abs(model.temperature - golden["logit_scale"]) < 1e-7
    assert (out.memory_patch_scores.reshape(4, 15, 15) - scores["visual_map_15"]).abs().max() < TOL
    assert (out.text_image_scores - scores["text_score_cls"]).abs().max() < TOL
    assert (out.image_scores - scores["image_score"]).abs().max() < TOL
    assert out.anomaly_maps.shape == (4, 400, 400)
    assert (out.anomaly_maps - scores["fused_pixel_map_400"]).abs().max() < TOL


def test_text_only_map_and_visual_peak(model, golden):
    """The two halves the fused results are built from: the text patch map (mode "text": blurred and upsampled
    text_map_seg_15) and the memory branch's peak (mode "memory": visual_max_400)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    test_images = golden["images"]["pixel_values"][golden["images"]["test_idx"]]
    scores = golden["scores"]
    with torch.no_grad():
        text = model(test_images, output_size=400, mode="text")
        memory = model(test_images, output_size=400, mode="memory")
    upsampled = torch.nn.functional.interpolate(scores["text_map_seg_15"].unsqueeze(1), size=(400, 400),
                                                mode="bilinear", align_corners=False)[:, 0].double().numpy()
    expected = np.stack([gaussian_filter(m, sigma=4.0, mode="reflect", truncate=4.0) for m in upsampled])
    assert np.abs(text.anomaly_maps.double().numpy() - expected).max() < TOL
    assert (memory.image_scores - scores["visual_max_400"]).abs().max() < TOL
    assert (text.image_scores - scores["text_score_cls"]).abs().max() < TOL


@pytest.mark.parametrize("head,setting", HEAD_SETTINGS)
def test_training_step_logits(model, golden, head, setting):
    """The CE logits of the reference's first step: tau [v.n, v.a_1..a_K] for the shots' features."""
    from anomclip_hf.model.losses import alignment_logits

    features = golden["features"]["global" if head == "image" else "patch_vv"][0:2]
    with torch.no_grad():
        logits = alignment_logits(features, model.encode_prompts("bottle", head), model.temperature)
    reference = golden["train_step"][setting]["logits"]
    if head == "pixel":  # the reference lays patch logits out (batch, class, patch) for CrossEntropyLoss
        reference = reference.transpose(1, 2)
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max() < TOL
