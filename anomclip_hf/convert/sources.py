"""Where an open_clip model to convert comes from.

The architecture: an open_clip model name, an open_clip config JSON, or a model object. The weights: a local
checkpoint file (safetensors, or a torch file read with ``weights_only=True``), an open_clip pretrained tag
(downloaded by open_clip where the network allows), or the model object itself. Weights are read only after
the architecture passed the checks, so a refused model costs no multi-GB read.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError

QUICKGELU_SUFFIX = "-quickgelu"
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass
class OpenClipSource:
    """An open_clip model, resolved: its name, config, preprocessing and a deferred weight loader."""

    name: str
    model_cfg: dict
    preprocess_cfg: dict
    load_state_dict: Callable[[], dict]
    provenance: dict = field(default_factory=dict)


def import_open_clip():
    try:
        import open_clip
    except ImportError as error:  # open_clip imports torchvision at import time
        raise ImportError(f"this needs open_clip_torch with torchvision ({error}); install them with "
                          "pip install 'anomclip-hf[open-clip]', or pass an open_clip config JSON and a local "
                          "checkpoint file, which need neither") from error
    return open_clip


def read_open_clip_config_file(path: Union[str, os.PathLike]) -> tuple[dict, dict]:
    """(model config, preprocess config) of a model-config JSON as in open_clip's model_configs/, or of an
    ``open_clip_config.json`` of a Hub/local-dir model ({"model_cfg": ..., "preprocess_cfg": ...})."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"open_clip config file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected an open_clip model config object, got {type(data).__name__}")
    model_cfg = data.get("model_cfg", data)
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise CheckpointError(f"{path} is not an open_clip model config: it lacks {missing} "
                         "(expected keys embed_dim, vision_cfg, text_cfg, optionally inside 'model_cfg')")
    return model_cfg, dict(data.get("preprocess_cfg") or {})


def registered_name(open_clip, name: str) -> Optional[str]:
    """The name open_clip registers `name` under: itself, or without a -quickgelu suffix; None if unknown."""
    for candidate in (name, name[: -len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else None):
        if candidate and open_clip.get_model_config(candidate) is not None:
            return candidate
    return None


def registry_model_config(name: str) -> dict:
    """The config open_clip registers for `name` (its QuickGELU suffix is applied by `apply_quickgelu_suffix`)."""
    open_clip = import_open_clip()
    registered = registered_name(open_clip, name)
    if registered is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise CheckpointError(f"open_clip knows no model named {name!r}" + (f"; did you mean {close}?" if close else
                         "; pass an open_clip model-config JSON instead"))
    return open_clip.get_model_config(registered)


def apply_quickgelu_suffix(name: str, model_cfg: dict) -> dict:
    """open_clip's convention: a name ending in -quickgelu is the same model with QuickGELU activations."""
    if name.endswith(QUICKGELU_SUFFIX) and not model_cfg.get("quick_gelu", False):
        return {**model_cfg, "quick_gelu": True}
    return model_cfg


def _plain_state_dict(checkpoint, path: str) -> dict:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]  # an open_clip training checkpoint
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), got {type(checkpoint).__name__}")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: expected a state dict of tensors; {not_tensors[:5]} are not tensors")
    # DataParallel/DDP training wraps the model as 'module.'
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def load_checkpoint_file(path: str) -> dict:
    """An open_clip state dict from a .safetensors file or a torch file, never unpickling arbitrary objects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return _plain_state_dict(load_file(path, device="cpu"), path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as error:
        if "TorchScript" not in str(error):
            raise
        raise CheckpointError(f"{path} is a TorchScript archive (as OpenAI's original CLIP files), which cannot be read "
                         "with weights_only=True; load it with open_clip.create_model(name, pretrained=path) and "
                         "convert the model object") from None
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path} holds objects other than tensors, refused by weights_only=True loading "
                         f"({str(error).splitlines()[0]}); re-save its state_dict() or use safetensors") from None
    return _plain_state_dict(checkpoint, path)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_file_source(name: str, model_cfg: dict, preprocess: dict, path: str) -> OpenClipSource:
    """Weights from a local file, read (and hashed for the conversion record) only when loaded."""
    provenance = {"checkpoint": os.path.basename(path)}

    def load() -> dict:
        state = load_checkpoint_file(path)
        provenance["checkpoint_sha256"] = file_sha256(path)
        return state

    return OpenClipSource(name, model_cfg, preprocess, load, provenance)


def _tag_download_path(open_clip, name: str, tag: str, tag_cfg: dict) -> str:
    # open_clip prefers the Hub copy, but 3.3 gives laion400m_e31 and _e32 of ViT-B-16-plus-240 the same Hub
    # repo (the e31 weights). A Hub repo shared by two tags cannot hold both: take the tag's own release URL.
    hub = tag_cfg.get("hf_hub")
    shared = hub and any(open_clip.get_pretrained_cfg(name, other).get("hf_hub") == hub
                         for other in open_clip.list_pretrained_tags_by_model(name) if other != tag)
    try:
        return open_clip.download_pretrained(tag_cfg, prefer_hf_hub=not (shared and tag_cfg.get("url")))
    except Exception as error:  # network, proxy, missing file: all mean the same to the user
        raise OSError(f"could not download open_clip weights {name!r} / {tag!r} ({error}); download the "
                      "checkpoint file where the network allows and pass its path instead") from error


def pretrained_tag_source(name: str, tag: str, model_cfg: dict) -> OpenClipSource:
    """Weights of an open_clip pretrained tag; its QuickGELU flag and preprocessing come with it."""
    open_clip = import_open_clip()
    registry_name = registered_name(open_clip, name)
    tag_cfg = open_clip.get_pretrained_cfg(registry_name, tag)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(registry_name)
        raise CheckpointError(f"{tag!r} is neither a checkpoint file nor an open_clip pretrained tag of {registry_name!r}"
                         f" (its tags: {known or 'none'})")
    if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
        # the weights were trained with QuickGELU: converting them with GELU would change every output
        model_cfg = {**model_cfg, "quick_gelu": True}
    preprocess = {key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_cfg}
    return OpenClipSource(name, model_cfg, preprocess,
                          lambda: load_checkpoint_file(_tag_download_path(open_clip, registry_name, tag, tag_cfg)),
                          {"pretrained_tag": tag, "download": tag_cfg.get("url") or tag_cfg.get("hf_hub")})


def _block_config(block: nn.Module, width: int) -> dict:
    from open_clip.transformer import (
        CustomResidualAttentionBlock,
        LayerScale,
        QuickGELU,
    )

    custom = isinstance(block, CustomResidualAttentionBlock)
    hidden = block.mlp.c_fc.out_features
    gelu = block.mlp.gelu
    approximate = getattr(gelu, "approximate", "none")
    return dict(width=width, head_width=width // block.attn.num_heads, heads=block.attn.num_heads,
                # +0.5: open_clip takes int(width * mlp_ratio), which must give back `hidden` exactly
                mlp_ratio=(hidden + 0.5) / width, block_type="custom" if custom else None,
                ls_init_value=True if isinstance(getattr(block, "ls_1", None), LayerScale) else None,
                act_kwargs={"approximate": approximate} if approximate != "none" else None,
                norm_kwargs={"eps": block.ln_1.eps} if block.ln_1.eps != 1e-5 else None,
                quick_gelu=isinstance(gelu, QuickGELU))


def config_from_open_clip_model(model: nn.Module, name: str) -> tuple[dict, dict]:
    """(model config, preprocess config) describing an open_clip `CLIP` object, read from its modules.

    Refuses the classes and towers that have no config equivalent to check (CoCa, CustomTextCLIP, timm or
    ResNet vision towers)."""
    open_clip = import_open_clip()
    from open_clip.transformer import VisionTransformer

    from .checks import UnsupportedOpenClipModel

    if not isinstance(model, open_clip.CLIP):
        raise UnsupportedOpenClipModel(f"open_clip model {name!r} is a {type(model).__name__}; only open_clip.CLIP "
                                       "(not CoCa or CustomTextCLIP with its custom text tower) maps to CLIPModel")
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedOpenClipModel(f"open_clip model {name!r} has a {type(visual).__name__} vision tower; "
                                       "only open_clip's VisionTransformer maps to CLIPModel")
    vision_block = _block_config(visual.transformer.resblocks[0], visual.transformer.width)
    text_block = _block_config(model.transformer.resblocks[0], model.transformer.width)
    vision_cfg = dict(layers=len(visual.transformer.resblocks), image_size=list(visual.image_size),
                      patch_size=list(visual.patch_size), attentional_pool=visual.attn_pool is not None,
                      no_ln_pre=isinstance(visual.ln_pre, nn.Identity), pool_type=visual.pool_type,
                      final_ln_after_pool=visual.final_ln_after_pool,
                      **{k: vision_block[k] for k in ("width", "head_width", "mlp_ratio", "block_type",
                                                     "ls_init_value", "act_kwargs", "norm_kwargs")})
    text_projection = model.text_projection
    text_cfg = dict(context_length=model.context_length, vocab_size=model.vocab_size,
                    layers=len(model.transformer.resblocks), pool_type=model.text_pool_type,
                    eos_id=getattr(model, "text_eos_id", None), no_causal_mask=model.attn_mask is None,
                    proj_bias=isinstance(text_projection, nn.Linear),
                    proj_type="none" if text_projection is None else "linear",
                    **{k: text_block[k] for k in ("width", "heads", "mlp_ratio", "block_type", "ls_init_value",
                                                 "act_kwargs", "norm_kwargs")})
    model_cfg = dict(embed_dim=visual.output_dim, quick_gelu=vision_block["quick_gelu"], vision_cfg=vision_cfg,
                     text_cfg=text_cfg, init_logit_bias=None if model.logit_bias is None else
                     float(model.logit_bias.detach().reshape(-1)[0]))
    return model_cfg, dict(getattr(visual, "preprocess_cfg", None) or {})


def resolve_open_clip_source(model, checkpoint: Optional[str] = None, config: Optional[str] = None,
                             name: Optional[str] = None) -> OpenClipSource:
    """An `OpenClipSource` from the converter's inputs (see the module docstring)."""
    if isinstance(model, nn.Module):
        if checkpoint is not None or config is not None:
            raise CheckpointError("an open_clip model object carries its own weights and architecture; "
                             "pass neither checkpoint nor config with it")
        name = name or f"{type(model).__name__} object"
        model_cfg, preprocess = config_from_open_clip_model(model, name)
        state = {key: value.detach() for key, value in model.state_dict().items()}
        return OpenClipSource(name, model_cfg, preprocess, lambda: state, {"source": "model object"})
    model = os.fspath(model)
    if config is not None:
        model_cfg, preprocess = read_open_clip_config_file(config)
        name = name or model
    elif model.endswith(".json"):
        model_cfg, preprocess = read_open_clip_config_file(model)
        name = name or os.path.splitext(os.path.basename(model))[0]
    else:
        model_cfg, preprocess = registry_model_config(model), {}
        name = name or model
    model_cfg = apply_quickgelu_suffix(name, model_cfg)
    if checkpoint is None:
        raise CheckpointError(f"no weights for {name!r}: pass a checkpoint file or an open_clip pretrained tag (for "
                         "random weights convert open_clip.create_model(name, pretrained=None) instead)")
    checkpoint = os.fspath(checkpoint)
    if os.path.isfile(checkpoint) or os.sep in checkpoint or checkpoint.endswith(_CHECKPOINT_SUFFIXES):
        return checkpoint_file_source(name, model_cfg, preprocess, checkpoint)  # a missing file fails on loading
    if config is not None or model.endswith(".json"):
        raise CheckpointError(f"checkpoint {checkpoint!r} is not a file, and pretrained tags need a model name known to "
                         "open_clip, not a config JSON")
    return pretrained_tag_source(model, checkpoint, model_cfg)
