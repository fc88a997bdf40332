"""CLIP checkpoint folders shaped like the Hub's own (same config fields, tokenizer and processor files),
with tiny random weights, written offline for the real-checkpoint tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from tiny_models import perturb_norms
from transformers import CLIPConfig, CLIPModel

from anomclip_hf.model.processing_anomclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

# openai/clip-vit-base-patch16's config.json keeps these legacy text ids; its tokenizer's EOS is <|endoftext|>.
LEGACY_TEXT_IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)


def openai_style_config(image_size: int = 32, patch_size: int = 4, vocab_size: int = 514) -> CLIPConfig:
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="quick_gelu", **LEGACY_TEXT_IDS)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def processor_config(image_size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                     std: Sequence[float] = OPENAI_CLIP_STD) -> dict:
    """openai/clip-vit-base-patch16's preprocessor_config.json, at `image_size`: resize the shortest edge,
    centre-crop, bicubic."""
    return {"crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True,
            "do_normalize": True, "do_resize": True, "do_convert_rgb": True,
            "image_processor_type": "CLIPImageProcessor", "image_mean": list(mean), "image_std": list(std),
            "resample": 3, "rescale_factor": 1 / 255, "do_rescale": True,
            "size": {"shortest_edge": image_size}}


def write_clip_folder(folder: Path, dtype: torch.dtype = torch.float32, max_shard_size: Optional[str] = None,
                      mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                      seed: int = 0) -> Path:
    """An OpenAI-style CLIP folder: config (legacy text ids, quick_gelu), weights in `dtype` (sharded when
    `max_shard_size` is given), tokenizer files padding with <|endoftext|>, preprocessor_config.json."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    assert tokenizer.pad_token == "<|endoftext|>" == tokenizer.eos_token
    config = openai_style_config(vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    clip = perturb_norms(CLIPModel(config), seed).eval().to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    clip.save_pretrained(folder, **kwargs)
    tokenizer.save_pretrained(folder)
    image_size = config.vision_config.image_size
    (folder / "preprocessor_config.json").write_text(json.dumps(processor_config(image_size, mean, std), indent=2))
    saved = json.loads((folder / "config.json").read_text())
    assert saved["text_config"]["eos_token_id"] == 2, saved["text_config"]  # the legacy field stays on disk
    return folder
