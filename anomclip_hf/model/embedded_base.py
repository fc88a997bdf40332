"""The demo's base: the default Hub CLIP, or offline a small random CLIP built in code (`anomclip-demo-random`),
whose results are labelled PIPELINE CHECK. Shared by `anomclip demo` and the web app."""

from __future__ import annotations

import os
from typing import Optional

import torch
from transformers import CLIPConfig, CLIPModel

from ..hub.base_source import hub_reachable, is_cached
from ..io.labels import is_random_base
from ..io.pixel_arrays import BICUBIC, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .modeling_anomclip import AnomCLIPModel
from .tokenization import build_offline_clip_tokenizer, open_clip_bpe_path

DEFAULT_BACKBONE = "openai/clip-vit-base-patch16"
EMBEDDED_BACKBONE = "anomclip-demo-random"


def embedded_demo_model(seed: int = 0) -> AnomCLIPModel:
    """A small random CLIP (ViT 112 px, patch 8, 4 layers) with an offline tokenizer."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=open_clip_bpe_path() is not None)
    config = CLIPConfig(
        projection_dim=64,
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu"),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                           image_size=112, patch_size=8, hidden_act="gelu"),
    )
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    clip.config.name_or_path = EMBEDDED_BACKBONE
    # Its preprocessing given here: the name is no Hub repo, so nothing may be looked up under it.
    model = AnomCLIPModel.from_clip(clip, tokenizer=tokenizer, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                                    image_resample=BICUBIC)
    model.config.random_weights = True  # saved with the base: whatever runs on it is labelled
    return model


def demo_backbone(base: Optional[str], seed: int) -> tuple[AnomCLIPModel, bool]:
    """(model, is_pipeline_check): `base` if given (a pipeline check when its config says random weights);
    else the default Hub CLIP when cached or reachable; else the embedded random CLIP."""
    if base is not None:
        model = AnomCLIPModel.from_base(base)
        return model, is_random_base(model)
    if os.path.isdir(DEFAULT_BACKBONE) or is_cached(DEFAULT_BACKBONE) or hub_reachable():
        return AnomCLIPModel.from_base(DEFAULT_BACKBONE), False
    print(f"The Hugging Face Hub cannot be reached and {DEFAULT_BACKBONE} is not cached, so the demo runs on a "
          "small random CLIP: its results are a pipeline check, not a detection result.")
    return embedded_demo_model(seed), True
