"""open_clip -> transformers CLIP: config, weights, tokenizer and image processor, written as one folder.

Weight mapping (open_clip ViT and text transformer -> `CLIPModel`):
- visual.conv1 -> patch_embedding; class and positional embeddings; ln_pre -> pre_layrnorm; ln_post ->
  post_layernorm; visual.proj (width x embed) -> visual_projection.weight (transposed);
- every block: ln_1/ln_2 -> layer_norm1/2; the fused attn.in_proj (q, k, v stacked) -> q_proj, k_proj,
  v_proj; attn.out_proj; mlp.c_fc/c_proj -> mlp.fc1/fc2;
- text: token and positional embeddings, ln_final -> final_layer_norm, text_projection (transposed);
- logit_scale (scalar or shape (1,)).
The mapping needs a config dict and a state dict only, no open_clip; what open_clip adds (names, tags,
model objects) is resolved in convert_open_clip_sources, what cannot be mapped is refused in
convert_open_clip_checks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from ..errors import CheckpointError
from ..io.atomic_io import atomic_directory
from ..model.tokenization import build_offline_clip_tokenizer
from .checks import (
    CLIP_EOT_ID,
    PREPROCESS_DEFAULTS,
    UnsupportedOpenClipModel,
    check_convertible,
)
from .sources import resolve_open_clip_source

CLIP_SOT_ID = 49406
CONVERSION_RECORD_NAME = "open_clip_conversion.json"
_BLOCK_KEYS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}

__all__ = ["ConvertedOpenClip", "UnsupportedOpenClipModel", "clip_config_from_open_clip",
           "clip_image_processor_from_open_clip", "clip_model_from_open_clip_state_dict", "convert_open_clip",
           "convert_open_clip_state_dict", "save_converted_open_clip"]


def _side(size: Union[int, list, tuple]) -> int:
    return int(size) if isinstance(size, int) else int(size[0])  # the checks ensured a square


def _hidden_act(cfg: dict, tower: str) -> str:
    if cfg["quick_gelu"]:
        return "quick_gelu"  # x * sigmoid(1.702 x), open_clip's QuickGELU
    approximate = (cfg[tower]["act_kwargs"] or {}).get("approximate", "none")
    return "gelu_pytorch_tanh" if approximate == "tanh" else "gelu"


def _layer_norm_eps(tower_cfg: dict) -> float:
    return float((tower_cfg["norm_kwargs"] or {}).get("eps", 1e-5))  # torch's LayerNorm default


def clip_config_from_open_clip(model_cfg: dict, model_name: str = "open_clip model") -> CLIPConfig:
    """A `CLIPConfig` with the sizes and activations of an open_clip model config (refused if not mappable)."""
    cfg = check_convertible(model_cfg, model_name)
    vision, text, embed_dim = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    return CLIPConfig(
        projection_dim=embed_dim,
        text_config=dict(
            vocab_size=text["vocab_size"], hidden_size=text["width"],
            intermediate_size=int(text["width"] * text["mlp_ratio"]),  # int() as open_clip sizes its MLP
            num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
            max_position_embeddings=text["context_length"], hidden_act=_hidden_act(cfg, "text_cfg"),
            layer_norm_eps=_layer_norm_eps(text), bos_token_id=CLIP_SOT_ID, eos_token_id=CLIP_EOT_ID,
            pad_token_id=CLIP_EOT_ID,  # the written tokenizer pads with <|endoftext|>
            projection_dim=embed_dim,
        ),
        vision_config=dict(
            hidden_size=vision["width"], intermediate_size=int(vision["width"] * vision["mlp_ratio"]),
            num_hidden_layers=vision["layers"], num_attention_heads=vision["width"] // vision["head_width"],
            image_size=_side(vision["image_size"]), patch_size=_side(vision["patch_size"]),
            hidden_act=_hidden_act(cfg, "vision_cfg"), layer_norm_eps=_layer_norm_eps(vision),
            projection_dim=embed_dim,
        ),
    )


class _StateReader:
    """Takes open_clip tensors by key, so that keys left over at the end (weights of a part the config did
    not announce, e.g. an attention pooler) are refused instead of silently dropped."""

    def __init__(self, state: dict, model_name: str):
        self.remaining = dict(state)
        self.model_name = model_name

    def take(self, key: str) -> torch.Tensor:
        if key not in self.remaining:
            raise CheckpointError(f"the checkpoint of {self.model_name!r} has no {key!r}: not the state dict of an "
                             "open_clip CLIP with ViT towers")
        return self.remaining.pop(key)

    def has(self, key: str) -> bool:
        return key in self.remaining


def _convert_blocks(reader: _StateReader, prefix: str, target: str, out: dict) -> None:
    index = 0
    while reader.has(f"{prefix}.{index}.ln_1.weight"):
        source, dest = f"{prefix}.{index}", f"{target}.{index}"
        for old, new in _BLOCK_KEYS.items():
            for kind in ("weight", "bias"):
                out[f"{dest}.{new}.{kind}"] = reader.take(f"{source}.{old}.{kind}")
        # open_clip packs q, k, v into one in_proj (nn.MultiheadAttention); transformers keeps three Linears.
        for kind in ("weight", "bias"):
            q, k, v = reader.take(f"{source}.attn.in_proj_{kind}").chunk(3, dim=0)
            out[f"{dest}.self_attn.q_proj.{kind}"] = q
            out[f"{dest}.self_attn.k_proj.{kind}"] = k
            out[f"{dest}.self_attn.v_proj.{kind}"] = v
        index += 1


def convert_open_clip_state_dict(state: dict, model_name: str = "open_clip model") -> dict[str, torch.Tensor]:
    """Map an open_clip CLIP state dict (ViT towers) to `CLIPModel` keys; every source key must be used."""
    reader = _StateReader(state, model_name)
    out = {
        "vision_model.embeddings.patch_embedding.weight": reader.take("visual.conv1.weight"),
        "vision_model.embeddings.class_embedding": reader.take("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": reader.take("visual.positional_embedding"),
        "vision_model.pre_layrnorm.weight": reader.take("visual.ln_pre.weight"),
        "vision_model.pre_layrnorm.bias": reader.take("visual.ln_pre.bias"),
        "vision_model.post_layernorm.weight": reader.take("visual.ln_post.weight"),
        "vision_model.post_layernorm.bias": reader.take("visual.ln_post.bias"),
        "visual_projection.weight": reader.take("visual.proj").t().contiguous(),
        "text_model.embeddings.token_embedding.weight": reader.take("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": reader.take("positional_embedding"),
        "text_model.final_layer_norm.weight": reader.take("ln_final.weight"),
        "text_model.final_layer_norm.bias": reader.take("ln_final.bias"),
        "text_projection.weight": reader.take("text_projection").t().contiguous(),
        "logit_scale": reader.take("logit_scale").reshape(()),
    }
    _convert_blocks(reader, "visual.transformer.resblocks", "vision_model.encoder.layers", out)
    _convert_blocks(reader, "transformer.resblocks", "text_model.encoder.layers", out)
    if reader.remaining:
        raise UnsupportedOpenClipModel(
            f"the checkpoint of {model_name!r} has weights CLIPModel has no place for: {sorted(reader.remaining)[:8]}"
            f"{' ...' if len(reader.remaining) > 8 else ''} (does the config describe this checkpoint?)")
    return out


def clip_model_from_open_clip_state_dict(model_cfg: dict, state: dict,
                                         model_name: str = "open_clip model") -> CLIPModel:
    """A transformers `CLIPModel` loaded strictly from an open_clip config and state dict."""
    model = CLIPModel(clip_config_from_open_clip(model_cfg, model_name))
    converted = convert_open_clip_state_dict(state, model_name)
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as error:  # size mismatches
        raise CheckpointError(f"the checkpoint of {model_name!r} does not fit its config: {error}") from None
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint of {model_name!r} does not fit its config: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]} (a different number of layers?)")
    return model.eval()


def clip_image_processor_from_open_clip(image_size: int, preprocess_cfg: Optional[dict] = None) -> CLIPImageProcessor:
    """open_clip's inference transform as a CLIPImageProcessor: RGB, resize the shortest edge (then centre
    crop) or squash, bicubic or bilinear, rescale to [0, 1], normalise with the config's mean/std."""
    cfg = {**PREPROCESS_DEFAULTS, **(preprocess_cfg or {})}
    mean, std = ([float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]
                 for v in (cfg["mean"], cfg["std"]))
    # open_clip's eval transform treats 'random' as bicubic
    resample = 2 if cfg["interpolation"] == "bilinear" else 3  # PIL's BILINEAR / BICUBIC codes
    square = {"height": image_size, "width": image_size}
    if cfg["resize_mode"] == "squash":
        return CLIPImageProcessor(size=square, do_center_crop=False, resample=resample, image_mean=mean,
                                  image_std=std)
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square, do_center_crop=True,
                              resample=resample, image_mean=mean, image_std=std)


def clip_tokenizer_for_open_clip(context_length: int) -> CLIPTokenizer:
    """CLIP's BPE tokenizer (open_clip's own vocabulary file), truncating at the model's context length."""

    tokenizer = build_offline_clip_tokenizer(real_vocab=True)
    tokenizer.model_max_length = context_length
    return tokenizer


@dataclass
class ConvertedOpenClip:
    """A converted model: the transformers CLIPModel, its processor and where it came from."""

    model: CLIPModel
    processor: CLIPProcessor
    record: dict


def convert_open_clip(model: Union[str, os.PathLike, torch.nn.Module], checkpoint: Optional[str] = None, *,
                      config: Optional[str] = None, name: Optional[str] = None) -> ConvertedOpenClip:
    """Convert an open_clip model to a transformers `CLIPModel` + `CLIPProcessor`.

    model: an open_clip model name (e.g. "ViT-B-16-plus-240"; a "-quickgelu" suffix selects QuickGELU), a path to
    an open_clip model-config JSON, or an open_clip `CLIP` object (which brings its own weights).
    checkpoint: a local .safetensors/torch file or an open_clip pretrained tag (downloaded by open_clip).
    config: an open_clip model-config JSON for `model` used as a plain name (then open_clip is not needed).
    Raises `UnsupportedOpenClipModel` for architectures CLIP cannot reproduce, before any weight is read.
    """

    source = resolve_open_clip_source(model, checkpoint, config=config, name=name)
    cfg = check_convertible(source.model_cfg, source.name, source.preprocess_cfg)
    clip = clip_model_from_open_clip_state_dict(source.model_cfg, source.load_state_dict(), source.name)
    image_size = _side(cfg["vision_cfg"]["image_size"])
    processor = CLIPProcessor(image_processor=clip_image_processor_from_open_clip(image_size, source.preprocess_cfg),
                              tokenizer=clip_tokenizer_for_open_clip(cfg["text_cfg"]["context_length"]))
    record = {"open_clip_model": source.name, **source.provenance, "model_cfg": source.model_cfg,
              "preprocess_cfg": {**PREPROCESS_DEFAULTS, **source.preprocess_cfg},
              "converter": "anomclip_hf.convert.open_clip"}
    return ConvertedOpenClip(clip, processor, record)


def save_converted_open_clip(model: Union[str, os.PathLike, torch.nn.Module], checkpoint: Optional[str],
                             output_dir: Union[str, os.PathLike], config_path: Optional[str] = None,
                             name: Optional[str] = None) -> str:
    """Convert (see `convert_open_clip`) and write a transformers CLIP folder all at once: the model, the
    tokenizer, the image processor (readable by CLIPModel/CLIPProcessor.from_pretrained and
    AnomCLIPModel.from_clip) and open_clip_conversion.json recording the source."""

    converted = convert_open_clip(model, checkpoint, config=config_path, name=name)
    with atomic_directory(os.fspath(output_dir)) as staging:
        converted.model.save_pretrained(staging)
        # The classic Hub layout (preprocessor_config.json + tokenizer files), which every transformers
        # release reads; CLIPProcessor.save_pretrained would nest the image settings in processor_config.json.
        converted.processor.tokenizer.save_pretrained(staging)
        converted.processor.image_processor.save_pretrained(staging)
        with open(os.path.join(staging, CONVERSION_RECORD_NAME), "w", encoding="utf-8") as handle:
            json.dump(converted.record, handle, indent=2, default=list)
    return os.fspath(output_dir)
