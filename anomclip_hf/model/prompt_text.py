"""The text side of an AnomCLIPModel: prompts with a category's learned vectors substituted at the prompt tokens,
encoded by the frozen text tower and pooled at the tokenizer's EOS, and the cached [normal, anomaly] prototypes
per head. A mixin of `AnomCLIPModel` (it uses the model's config, CLIP towers, tokenizer and categories)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.nn import functional as F

from .category import HEADS, CategoryState
from .losses import TextFeatures
from .prompts import HeadPrompts, build_head_prompts, build_zero_shot_prompts
from .sanity import check_prototypes
from .text_encoding import encode_text_embeddings, truncate_to_longest


class PromptTextMixin:
    """Prompt encoding and text prototypes of the categories."""

    def _prompt_embeddings(self, vectors: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings with a category's learned `vectors` (one row per prompt token) substituted at the
        prompt tokens."""
        prompt_ids = torch.tensor(self.config.prompt_token_ids, device=input_ids.device)
        matches = input_ids.unsqueeze(-1) == prompt_ids
        is_prompt = matches.any(-1)
        token_embedding = self.clip.text_model.embeddings.token_embedding
        embeds = token_embedding(torch.where(is_prompt, torch.zeros_like(input_ids), input_ids))
        if bool(is_prompt.any()):
            rows = matches.int().argmax(-1)[is_prompt]
            learned = F.embedding(rows, vectors).to(embeds.dtype)  # = prompt_tokens.lookup of a loaded category
            embeds = embeds.masked_scatter(is_prompt.unsqueeze(-1), learned)
        return embeds

    def tokenize_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("this AnomCLIPModel has no tokenizer: load it with from_clip/from_pretrained or set "
                             "model.tokenizer")
        length = self.config.clip_config.text_config.max_position_embeddings
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    def encode_prompt_texts(self, category: str, prompts: Sequence[str]) -> torch.Tensor:
        """Unnormalised float32 text features (len(prompts), D) of prompts that may contain prompt tokens,
        pooled at the tokenizer's EOS (`text_eos_token_id`; the first one: CLIP tokenizers pad with EOS)."""
        return self._encode_texts(self.prompt_tokens.vectors(self.get_category(category).name), prompts)

    def _encode_texts(self, vectors: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if not prompts:
            return torch.zeros(0, self.config.clip_config.projection_dim, device=self.device)
        eos = self.text_eos_token_id
        input_ids = truncate_to_longest(self.tokenize_prompts(prompts), eos)
        embeds = self._prompt_embeddings(vectors, input_ids)
        return encode_text_embeddings(self.clip.text_model, self.clip.text_projection, embeds, input_ids, eos).float()

    def head_prompts(self, category: str, head: str) -> HeadPrompts:
        return self._head_prompts_of(self.get_category(category), head)

    def _head_prompts_of(self, state: CategoryState, head: str) -> HeadPrompts:
        if not state.learned_prompts:
            return build_zero_shot_prompts(state.class_name, state.phrases)
        return build_head_prompts(self.config, head, state.class_name, state.phrases)

    def encode_prompts(self, category: str, head: str) -> TextFeatures:
        """Per-prompt text features of one head (with gradients to the prompt vectors when enabled)."""
        state = self.get_category(category)
        return self._encode_head(state, head, self.prompt_tokens.vectors(state.name))

    def _encode_head(self, state: CategoryState, head: str, vectors: torch.Tensor) -> TextFeatures:
        prompts = self._head_prompts_of(state, head)
        features = self._encode_texts(vectors, prompts.normal + prompts.manual + prompts.learned)
        n_normal, n_manual = len(prompts.normal), len(prompts.manual)
        return TextFeatures(normal=features[:n_normal], manual=features[n_normal:n_normal + n_manual],
                            learned=features[n_normal + n_manual:])

    def text_prototypes(self, category: Optional[str] = None) -> dict[str, torch.Tensor]:
        """{head: (2, D) [normal, anomaly]}; constants after training, so computed once and cached."""
        state = self.get_category(category)
        if not state.prototypes:
            state.prototypes = self.checked_prototypes(state, self.prompt_tokens.vectors(state.name),
                                                       f"category {state.name!r}: the text prototypes computed from "
                                                       "its prompt vectors, head")
        return state.prototypes

    def checked_prototypes(self, state: CategoryState, vectors: torch.Tensor, where: str) -> dict:
        """{head: (2, D)} of `state`'s prompts with prompt `vectors`, refused (a ValueError naming `where`) when
        degenerate: NaN (vectors too large for the text tower), zero or equal rows (see `sanity`)."""
        # Plain tensors even when first asked inside torch.inference_mode: the cache outlives that block.
        # Float32 even when first asked under autocast: cached state must not depend on the first caller.
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            prototypes = {head: self._encode_head(state, head, vectors).prototypes() for head in HEADS}
        if not torch.compiler.is_exporting():
            check_prototypes(prototypes, where)
        return prototypes

    def clear_prototype_cache(self, category: Optional[str] = None) -> None:
        """Call after changing a category's prompt vectors (training does)."""
        self.get_category(category).prototypes = {}
