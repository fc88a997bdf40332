"""Build the reference-code preset of AnomCLIPModel on the golden tiny model (shared by parity tests)."""

from __future__ import annotations

import copy

import torch

from anomclip_hf import AnomCLIPModel

REFERENCE_PRESET = dict(anomaly_token_position="before_class", memory_layers=[3, 8], memory_tap="after_attention",
                        text_temperature=None, gaussian_sigma=4.0, sigma_reference_size=400)
HEAD_SETTINGS = (("image", "cls"), ("pixel", "seg"))


def golden_prompt_vectors(golden) -> torch.Tensor:
    """The golden context vectors as rows of the prompt table (image head, then pixel head)."""
    rows = []
    for _, setting in HEAD_SETTINGS:
        width = golden["text"][setting]["normal_ctx"].shape[-1]
        rows += [golden["text"][setting]["normal_ctx"].reshape(-1, width),
                 golden["text"][setting]["abnormal_ctx"].reshape(-1, width)]
    return torch.cat(rows)


def golden_model(golden_clip, tokenizer, golden) -> AnomCLIPModel:
    model = AnomCLIPModel.from_clip(copy.deepcopy(golden_clip), tokenizer=tokenizer, **REFERENCE_PRESET)
    pixel_values = golden["images"]["pixel_values"]
    model.add_category("bottle", reference_images=pixel_values[golden["images"]["memory_idx"]],
                       learned_prompts=True)
    with torch.no_grad():
        model.prompt_parameters("bottle")[0].copy_(golden_prompt_vectors(golden))
    model.clear_prototype_cache("bottle")
    return model
