"""The learnable prompt vectors: one PEFT TrainableTokens adapter per category.

The vectors live in a small table (one row per added prompt token) rather than in CLIP's token
embedding: CLIP's weights stay byte-identical to the base checkpoint (no vocabulary resize), while
PEFT still owns the trainable rows, their state-dict format and the switching between categories.
"""

from __future__ import annotations

import warnings

import torch
from peft import (
    TrainableTokensConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from torch import nn
from torch.nn import functional as F

from ..errors import AdapterError

TARGET_MODULE = "token_embedding"
# The keys of a category's PEFT state dict (adapter_model.safetensors): the vectors of every row.
ADAPTER_WEIGHT_KEYS = (f"{TARGET_MODULE}.trainable_tokens_delta",)


class PromptTokenTable(nn.Module):
    """`token_embedding` rows = the prompt tokens; each category is a named PEFT adapter over all rows."""

    def __init__(self, num_tokens: int, width: int):
        super().__init__()
        # Base rows are never used for scoring (every category brings its own), so zeros are fine.
        self.token_embedding = nn.Embedding(num_tokens, width)
        nn.init.zeros_(self.token_embedding.weight)
        self.token_embedding.weight.requires_grad_(False)
        self.num_tokens = num_tokens

    def adapter_config(self) -> TrainableTokensConfig:
        return TrainableTokensConfig(token_indices=list(range(self.num_tokens)), target_modules=[TARGET_MODULE])

    def _inject(self, name: str) -> None:
        with warnings.catch_warnings():
            # PEFT warns on every adapter after the first; several named adapters are the intent here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(self.adapter_config(), self, adapter_name=name)
        self._keep_trainable()

    def _keep_trainable(self) -> None:
        # PEFT freezes every adapter but its active one; here each category's vectors stay trainable (the
        # optimizer decides what is trained) and no adapter is "active": `lookup` names the one it reads.
        for vectors in self.token_embedding.trainable_tokens_delta.values():
            vectors.requires_grad_(True)

    @property
    def adapter_names(self) -> list[str]:
        layer = self.token_embedding
        return list(layer.trainable_tokens_delta.keys()) if hasattr(layer, "trainable_tokens_delta") else []

    def add_adapter(self, name: str, init_values: torch.Tensor) -> None:
        if name in self.adapter_names:
            self.delete_adapter(name)
        self._inject(name)
        with torch.no_grad():
            self.vectors(name).copy_(init_values)

    def delete_adapter(self, name: str) -> None:
        self.token_embedding.delete_adapter(name)

    def vectors(self, name: str) -> nn.Parameter:
        """The (num_tokens, width) learnable vectors of a category."""
        return self.token_embedding.trainable_tokens_delta[name]

    def lookup(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Embeddings of table rows under adapter `name` (a pure read: nothing is switched or unfrozen).

        The adapter covers every row of the table, so PEFT's layer would return exactly these rows.
        """
        return F.embedding(rows, self.vectors(name))

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self, adapter_name=name)

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Set adapter `name`'s vectors from a PEFT state dict; if that fails, the table is as before (an
        existing adapter keeps its vectors, a new one is removed)."""
        existed = name in self.adapter_names
        previous = self.vectors(name).detach().clone() if existed else None
        if not existed:
            self._inject(name)
        try:
            result = set_peft_model_state_dict(self, state, adapter_name=name)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise AdapterError(f"adapter weights have unexpected keys {unexpected}")
        except BaseException:
            if existed:
                with torch.no_grad():
                    self.vectors(name).copy_(previous)
            else:
                with warnings.catch_warnings():  # PEFT made the half-loaded adapter active; it goes away
                    warnings.filterwarnings("ignore", message=f"Adapter {name} was active")
                    self.delete_adapter(name)
            raise
        self._keep_trainable()
