"""Tiny random CLIP models as transformers' own CLIP tests build them, shared by fixtures and tests."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel

from anomclip_hf.model.tokenization import build_offline_clip_tokenizer


def tiny_clip_config(layers: int = 2, image_size: int = 30, patch_size: int = 2) -> CLIPConfig:
    """As transformers' own CLIP tests: hidden 32, 2 layers; a byte-level vocabulary of 514 tokens."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu")
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size, hidden_act="gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def perturb_norms(clip: CLIPModel, seed: int = 0) -> CLIPModel:
    """Random init leaves LayerNorms at 1/0 and biases at 0; perturb them so mistakes cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in clip.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return clip
