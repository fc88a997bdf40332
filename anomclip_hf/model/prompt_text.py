"""The text side of an AnomCLIPModel, as functions of the model: prompts with a category's learned vectors
substituted at the prompt tokens, encoded by the frozen text tower and pooled at the tokenizer's EOS, and the
[normal, anomaly] prototypes per head (cached in the category's state by `AnomCLIPModel.text_prototypes`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from ..errors import CategoryError, ConfigurationError
from .category import HEADS, CategoryState
from .losses import TextFeatures
from .prompts import HeadPrompts, build_head_prompts, build_zero_shot_prompts
from .sanity import check_prototypes
from .text_encoding import encode_text_embeddings, truncate_to_longest


def prompt_embeddings(model, vectors: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings with a category's learned `vectors` (one row per prompt token) substituted at the
    prompt tokens."""
    prompt_ids = torch.tensor(model.config.prompt_token_ids, device=input_ids.device)
    matches = input_ids.unsqueeze(-1) == prompt_ids
    is_prompt = matches.any(-1)
    token_embedding = model.clip.text_model.embeddings.token_embedding
    embeds = token_embedding(torch.where(is_prompt, torch.zeros_like(input_ids), input_ids))
    if bool(is_prompt.any()):
        rows = matches.int().argmax(-1)[is_prompt]
        learned = F.embedding(rows, vectors).to(embeds.dtype)  # = prompt_tokens.lookup of a loaded category
        embeds = embeds.masked_scatter(is_prompt.unsqueeze(-1), learned)
    return embeds


def tokenize_prompts(model, prompts: Sequence[str]) -> torch.Tensor:
    if model.tokenizer is None:
        raise ConfigurationError("this AnomCLIPModel has no tokenizer: load it with from_clip/from_pretrained or "
                                 "set model.tokenizer")
    length = model.config.clip_config.text_config.max_position_embeddings
    ids = model.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                          return_tensors="pt")["input_ids"]
    return ids.to(model.device)


def encode_texts(model, vectors: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Unnormalised float32 text features (len(prompts), D) of prompts that may contain prompt tokens (read from
    `vectors`), pooled at the tokenizer's EOS (`text_eos_token_id`; the first one: CLIP tokenizers pad with EOS)."""
    if not prompts:
        return torch.zeros(0, model.config.clip_config.projection_dim, device=model.device)
    eos = model.text_eos_token_id
    input_ids = truncate_to_longest(tokenize_prompts(model, prompts), eos)
    embeds = prompt_embeddings(model, vectors, input_ids)
    return encode_text_embeddings(model.clip.text_model, model.clip.text_projection, embeds, input_ids, eos).float()


def head_prompts_of(config, state: CategoryState, head: str) -> HeadPrompts:
    """The prompts of one head: hand-written ones until the category's prompts are learned."""
    if not state.learned_prompts:
        return build_zero_shot_prompts(state.class_name, state.phrases)
    return build_head_prompts(config, head, state.class_name, state.phrases)


def encode_head(model, state: CategoryState, head: str, vectors: torch.Tensor) -> TextFeatures:
    """Per-prompt text features of one head (with gradients to `vectors` when enabled)."""
    prompts = head_prompts_of(model.config, state, head)
    features = encode_texts(model, vectors, prompts.normal + prompts.manual + prompts.learned)
    n_normal, n_manual = len(prompts.normal), len(prompts.manual)
    return TextFeatures(normal=features[:n_normal], manual=features[n_normal:n_normal + n_manual],
                        learned=features[n_normal + n_manual:])


def checked_prototypes(model, state: CategoryState, vectors: torch.Tensor, where: str,
                       error: type = CategoryError) -> dict:
    """{head: (2, D)} of `state`'s prompts with prompt `vectors`, refused (`error`, naming `where`) when
    degenerate: NaN (vectors too large for the text tower), zero or equal rows (see `sanity`)."""
    # Plain tensors even when first asked inside torch.inference_mode: the cache outlives that block.
    # Float32 even when first asked under autocast: cached state must not depend on the first caller.
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(model.device.type, enabled=False):
        prototypes = {head: encode_head(model, state, head, vectors).prototypes() for head in HEADS}
    if not torch.compiler.is_exporting():
        check_prototypes(prototypes, where, error)
    return prototypes
