"""open_clip -> transformers CLIP: config and state-dict mapping.

Needs only the open_clip model config (a dict as in open_clip's model_configs/*.json) and its state
dict, so the mapping itself runs without open_clip installed; `anomclip convert-open-clip` adds the
checkpoint loading on top.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from transformers import CLIPConfig

_BLOCK_KEYS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def clip_config_from_open_clip(model_cfg: dict, eos_token_id: int = 49407, bos_token_id: int = 49406) -> CLIPConfig:
    """A `CLIPConfig` with the shapes and activation of an open_clip model config."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    for tower in (vision, text):
        if tower.get("ls_init_value") is not None:
            raise ValueError("open_clip models with LayerScale (ls_init_value) have no transformers CLIP equivalent")
    activation = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    vision_width = vision["width"]
    head_width = vision.get("head_width", 64)
    text_width = text["width"]
    return CLIPConfig(
        projection_dim=model_cfg["embed_dim"],
        text_config=dict(
            vocab_size=text.get("vocab_size", 49408), hidden_size=text_width,
            intermediate_size=int(text_width * text.get("mlp_ratio", 4.0)),
            num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
            max_position_embeddings=text.get("context_length", 77), hidden_act=activation,
            layer_norm_eps=1e-5, eos_token_id=eos_token_id, bos_token_id=bos_token_id, pad_token_id=0,
            projection_dim=model_cfg["embed_dim"],
        ),
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=int(vision_width * vision.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision["layers"], num_attention_heads=vision_width // head_width,
            image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_act=activation,
            layer_norm_eps=1e-5, projection_dim=model_cfg["embed_dim"],
        ),
    )


def _convert_blocks(state: dict, prefix: str, target: str, out: dict) -> None:
    index = 0
    while f"{prefix}.{index}.ln_1.weight" in state:
        source, dest = f"{prefix}.{index}", f"{target}.{index}"
        for old, new in _BLOCK_KEYS.items():
            for kind in ("weight", "bias"):
                out[f"{dest}.{new}.{kind}"] = state[f"{source}.{old}.{kind}"]
        # open_clip packs q, k, v into one in_proj; transformers keeps three Linear layers.
        for kind in ("weight", "bias"):
            q, k, v = state[f"{source}.attn.in_proj_{kind}"].chunk(3, dim=0)
            out[f"{dest}.self_attn.q_proj.{kind}"] = q
            out[f"{dest}.self_attn.k_proj.{kind}"] = k
            out[f"{dest}.self_attn.v_proj.{kind}"] = v
        index += 1


def convert_open_clip_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """Map an open_clip CLIP state dict (OpenAI-style ViT towers) to `CLIPModel` keys."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t().contiguous(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    _convert_blocks(state, "visual.transformer.resblocks", "vision_model.encoder.layers", out)
    _convert_blocks(state, "transformer.resblocks", "text_model.encoder.layers", out)
    return out


def clip_model_from_open_clip_state_dict(model_cfg: dict, state: dict):
    """A transformers `CLIPModel` loaded strictly from an open_clip config and state dict."""
    from transformers import CLIPModel

    model = CLIPModel(clip_config_from_open_clip(model_cfg))
    converted = convert_open_clip_state_dict(state)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"open_clip conversion mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def save_converted_open_clip(model_name: str, checkpoint: str, output_dir: str,
                             config_path: Optional[str] = None) -> str:
    """Convert an open_clip checkpoint into a transformers CLIP folder (model, tokenizer, image processor).

    With `config_path` (an open_clip model-config JSON) and a checkpoint file, open_clip itself is not needed;
    otherwise the config (and a pretrained tag's download) come from open_clip.
    """
    from transformers import CLIPImageProcessor

    from .atomic_io import atomic_directory
    from .tokenization import build_offline_clip_tokenizer

    if config_path is not None:
        with open(config_path, encoding="utf-8") as handle:
            model_cfg = json.load(handle)
    else:
        import open_clip

        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(f"open_clip knows no model named {model_name!r}")
    if os.path.isfile(checkpoint):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {key.removeprefix("module."): value for key, value in state.items()}
    else:
        import open_clip

        state = open_clip.create_model(model_name, pretrained=checkpoint).state_dict()
    model = clip_model_from_open_clip_state_dict(model_cfg, state)
    model.config.name_or_path = f"open_clip:{model_name}:{os.path.basename(checkpoint)}"
    size = model_cfg["vision_cfg"]["image_size"]
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        build_offline_clip_tokenizer(real_vocab=True).save_pretrained(staging)
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            staging)
    return output_dir
