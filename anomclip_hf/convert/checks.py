"""Which open_clip models a transformers `CLIPModel` can reproduce, and clear refusals of the others.

The option lists follow open_clip 3.3 (``CLIPVisionCfg``/``CLIPTextCfg`` in model.py, the towers in
transformer.py). An option is refused when any value but its default changes the computation in a way
CLIPModel has no place for. Options accepted whatever their value, and why:
- sizes (width, layers, heads, head_width, mlp_ratio, context_length): CLIPConfig has the same fields;
- patch_dropout: active in training only; output_tokens, attn_pooler_*, timm_*/hf_* extras: unused here;
- pos_embed_type 'sin_cos_2d': the fixed table is stored in the state dict like a learned one;
- final_ln_after_pool (with class-token or EOS pooling): LayerNorm acts per token, so normalising before or
  after picking one token gives the same vector;
- pad_id: open_clip reads it only for embed_cls or bidirectional text, both refused; padding sits after EOS
  under a causal mask and cannot reach the pooled token.
Unknown options are refused too: a newer open_clip field may change the model in a way not checked here.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

from ..errors import CheckpointError

CLIP_VOCAB_SIZE = 49408  # the BPE vocabulary written beside the converted model
CLIP_EOT_ID = 49407

# open_clip's dataclass defaults for the fields the mapping reads (model.py, CLIPVisionCfg / CLIPTextCfg).
VISION_DEFAULTS = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16, image_size=224,
                       pool_type="tok", act_kwargs=None, norm_kwargs=None)
TEXT_DEFAULTS = dict(context_length=77, vocab_size=CLIP_VOCAB_SIZE, width=512, heads=8, layers=12, mlp_ratio=4.0,
                     pool_type="argmax", eos_id=2, act_kwargs=None, norm_kwargs=None)
PREPROCESS_DEFAULTS = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
                           interpolation="bicubic", resize_mode="shortest", mode="RGB")

Rule = tuple[Callable[[Any], bool], str]  # (is this value representable?, what the value means)


class UnsupportedOpenClipModel(CheckpointError):
    """An open_clip model (or its preprocessing) that transformers' CLIP cannot reproduce exactly."""


def _off(value) -> bool:
    return not value


def _square(value) -> bool:
    return isinstance(value, int) or (isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1])


def _gelu_kwargs(value) -> bool:
    return not value or (set(value) == {"approximate"} and value["approximate"] in ("none", "tanh"))


def _eps_only(value) -> bool:
    return not value or set(value) == {"eps"}


_TOWER_RULES: dict[str, Rule] = {
    "ls_init_value": (lambda v: v is None, "LayerScale after attention and MLP; CLIP blocks have none"),
    "act_kwargs": (_gelu_kwargs, "activation options other than GELU's approximate='tanh'"),
    "norm_kwargs": (_eps_only, "LayerNorm options other than eps"),
    "block_type": (lambda v: v in (None, "default"), "open_clip's custom attention block"),
    "qk_norm": (_off, "LayerNorm on queries and keys"),
    "scaled_cosine_attn": (_off, "scaled cosine attention"),
    "scale_heads": (_off, "learned per-head attention scales"),
    "scale_attn_inner": (_off, "LayerNorm inside the attention"),
    "scale_attn": (_off, "LayerNorm after the attention"),
    "scale_fc": (_off, "LayerNorm inside the MLP"),
}
_VISION_RULES: dict[str, Rule] = {
    **_TOWER_RULES,
    "layers": (lambda v: isinstance(v, int), "a ModifiedResNet (convolutional) vision tower, not a ViT"),
    "image_size": (_square, "a non-square input; CLIP's vision embeddings are square"),
    "patch_size": (_square, "non-square patches; CLIP's patches are square"),
    "timm_model_name": (_off, "a timm vision tower, not open_clip's ViT"),
    "attentional_pool": (_off, "attentional pooling (CoCa style); CLIP pools the class token"),
    "no_ln_pre": (_off, "no LayerNorm before the blocks; CLIP always applies pre_layrnorm"),
    "pool_type": (lambda v: v == "tok", "pooling other than the class token; CLIP pools the class token"),
    "pos_embed_type": (lambda v: v in ("learnable", "sin_cos_2d"), "an unknown positional embedding"),
}
_TEXT_RULES: dict[str, Rule] = {
    **_TOWER_RULES,
    "hf_model_name": (_off, "a Hugging Face text tower, not open_clip's CLIP text transformer"),
    "hf_tokenizer_name": (_off, "another tokenizer than CLIP's BPE"),
    "tokenizer_mode": (_off, "another tokenizer than CLIP's BPE"),
    "tokenizer_kwargs": (_off, "tokenizer options (e.g. text cleaning) CLIP's tokenizer does not have"),
    "vocab_size": (lambda v: v == CLIP_VOCAB_SIZE, f"a vocabulary other than CLIP's {CLIP_VOCAB_SIZE} BPE tokens"),
    "embed_cls": (_off, "an appended class token (CoCa style)"),
    "no_causal_mask": (_off, "bidirectional attention; CLIP's text tower is causal"),
    "pool_type": (lambda v: v in ("argmax", "eos"), "pooling other than at the end-of-text token"),
    "proj_bias": (_off, "a bias on the text projection; CLIP's text_projection has none"),
    "proj_type": (lambda v: v != "none", "no text projection; CLIP always projects"),
}
_MODEL_RULES: dict[str, Rule] = {
    "custom_text": (_off, "a CustomTextCLIP text tower; only the classic CLIP layout is mapped"),
    "multimodal_cfg": (_off, "a CoCa captioning decoder"),
    "init_logit_bias": (lambda v: v is None, "a SigLIP logit bias; CLIPModel has only logit_scale"),
}
# Accepted whatever their value (see the module docstring).
_VISION_FREE = {"width", "head_width", "mlp_ratio", "patch_dropout", "attn_pooler_queries", "attn_pooler_heads",
                "final_ln_after_pool", "output_tokens", "timm_model_pretrained", "timm_pool", "timm_proj",
                "timm_proj_bias", "timm_drop", "timm_drop_path"}
_TEXT_FREE = {"width", "heads", "layers", "mlp_ratio", "context_length", "pad_id", "eos_id", "final_ln_after_pool",
              "output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_MODEL_FREE = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "nonscalar_logit_scale",
               "output_dict"}
KNOWN_VISION_OPTIONS = set(_VISION_RULES) | _VISION_FREE
KNOWN_TEXT_OPTIONS = set(_TEXT_RULES) | _TEXT_FREE
KNOWN_MODEL_OPTIONS = set(_MODEL_RULES) | _MODEL_FREE


def with_open_clip_defaults(model_cfg: dict) -> dict:
    """A copy of an open_clip model config with open_clip's defaults filled in where the config is silent."""
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise CheckpointError(f"not an open_clip model config: no {key!r} (keys: {sorted(model_cfg)})")
    full = copy.deepcopy(model_cfg)
    full["vision_cfg"] = {**VISION_DEFAULTS, **full["vision_cfg"]}
    full["text_cfg"] = {**TEXT_DEFAULTS, **full["text_cfg"]}
    full.setdefault("quick_gelu", False)
    return full


def _rule_problems(section: dict, rules: dict[str, Rule], known: set, prefix: str) -> list[str]:
    problems = []
    for option, value in section.items():
        if option not in known:
            problems.append(f"{prefix}{option}={value!r}: an option this converter does not know")
        elif option in rules and not rules[option][0](value):
            problems.append(f"{prefix}{option}={value!r}: {rules[option][1]}")
    return problems


def _cross_field_problems(cfg: dict) -> list[str]:
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    problems = []
    if isinstance(vision["layers"], int) and vision["width"] % vision["head_width"]:
        problems.append(f"vision_cfg.head_width={vision['head_width']!r}: does not divide width {vision['width']}")
    if text["pool_type"] == "eos" and text["eos_id"] != CLIP_EOT_ID:
        problems.append(f"text_cfg.eos_id={text['eos_id']!r}: pooling at another end-of-text id than CLIP's "
                        f"{CLIP_EOT_ID}")
    for tower in ("vision_cfg", "text_cfg"):
        if cfg["quick_gelu"] and cfg[tower]["act_kwargs"]:
            problems.append(f"{tower}.act_kwargs={cfg[tower]['act_kwargs']!r}: options for QuickGELU")
    return problems


def preprocess_problems(preprocess_cfg: Optional[dict]) -> list[str]:
    """Preprocessing CLIPImageProcessor cannot do (open_clip's PreprocessCfg fields)."""
    cfg = {**PREPROCESS_DEFAULTS, **(preprocess_cfg or {})}
    problems = []
    if cfg["resize_mode"] not in ("shortest", "squash"):
        problems.append(f"preprocess_cfg.resize_mode={cfg['resize_mode']!r}: resizing the longest edge and padding; "
                        "CLIPImageProcessor resizes the shortest edge (then crops) or squashes")
    if cfg["interpolation"] not in ("bicubic", "bilinear", "random"):
        problems.append(f"preprocess_cfg.interpolation={cfg['interpolation']!r}: an unknown resampling")
    if cfg["mode"] != "RGB":
        problems.append(f"preprocess_cfg.mode={cfg['mode']!r}: CLIPImageProcessor converts to RGB")
    return problems


def check_convertible(model_cfg: dict, model_name: str, preprocess_cfg: Optional[dict] = None) -> dict:
    """Raise `UnsupportedOpenClipModel` listing every option of `model_cfg` (and its preprocessing) that a
    transformers CLIP cannot reproduce; return the config with open_clip's defaults filled in."""
    cfg = with_open_clip_defaults(model_cfg)
    problems = (_rule_problems(cfg, _MODEL_RULES, KNOWN_MODEL_OPTIONS, "")
                + _rule_problems(cfg["vision_cfg"], _VISION_RULES, KNOWN_VISION_OPTIONS, "vision_cfg.")
                + _rule_problems(cfg["text_cfg"], _TEXT_RULES, KNOWN_TEXT_OPTIONS, "text_cfg."))
    if not problems:  # cross-field checks assume the single-field ones passed (a ViT with int layers, ...)
        problems = _cross_field_problems(cfg)
    problems += preprocess_problems(preprocess_cfg)
    if problems:
        raise UnsupportedOpenClipModel(
            f"open_clip model {model_name!r} cannot be converted to a transformers CLIPModel without changing "
            "what it computes:\n  - " + "\n  - ".join(problems))
    return cfg
