"""The categories an AnomCLIPModel holds, keyed by name as PEFT keys its adapters: one `CategoryBank` module.

It owns every per-category thing the model has: the `CategoryState` of each category (memory bank, cached
text prototypes, text and metadata), the prompt-token table whose named PEFT adapters are the categories'
learnable prompt vectors, and the name of the active category. Being module state, `.to()`, `.half()`,
`state_dict()` and accelerate see all of it; an adapter folder is its serialised form (`category_io`).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ..errors import CategoryError
from .category import CategoryState
from .prompt_learner import PromptTokenTable


class CategoryBank(nn.Module):
    """`states` (name -> CategoryState), `prompt_tokens` (one PEFT adapter per name) and the `active` name."""

    def __init__(self, num_prompt_tokens: int, width: int):
        super().__init__()
        self.prompt_tokens = PromptTokenTable(num_prompt_tokens, width)
        self.states = nn.ModuleDict()
        self.active: Optional[str] = None

    @property
    def names(self) -> list[str]:
        return list(self.states)

    def __contains__(self, name: str) -> bool:
        return name in self.states

    def __len__(self) -> int:
        return len(self.states)

    @property
    def device(self) -> torch.device:
        return next(self.prompt_tokens.parameters()).device

    def get(self, name: Optional[str] = None) -> CategoryState:
        """Category `name`, default the active one; a CategoryError when there is none of that name."""
        name = name or self.active
        if name is None:
            raise CategoryError("no category is loaded: call add_category(...) or load_category(...) first")
        if name not in self.states:
            raise CategoryError(f"unknown category {name!r}; loaded categories: {self.names}")
        return self.states[name]

    def activate(self, name: str) -> None:
        self.get(name)
        self.active = name

    def vectors(self, name: Optional[str] = None) -> nn.Parameter:
        """The (prompt tokens, width) learnable prompt vectors of a category (its PEFT adapter)."""
        key = name or self.active
        self.get(key)  # a clear error for an unknown name
        return self.prompt_tokens.vectors(key)

    def add(self, state: CategoryState, initial_vectors: torch.Tensor, activate: bool = True) -> CategoryState:
        """Hold a new category (replacing one of the same name) with fresh prompt vectors `initial_vectors`."""
        self.prompt_tokens.add_adapter(state.name, initial_vectors.to(self.device))
        return self._hold(state, activate)

    def load(self, state: CategoryState, adapter_weights: Mapping[str, torch.Tensor],
             activate: bool = True) -> CategoryState:
        """Hold a category whose prompt vectors come as a PEFT state dict (an adapter file). Setting them is the
        one step that can fail; the table is then as before and the bank unchanged."""
        self.prompt_tokens.load_adapter_state_dict(state.name, {k: v.to(self.device)
                                                                for k, v in adapter_weights.items()})
        return self._hold(state, activate)

    def _hold(self, state: CategoryState, activate: bool) -> CategoryState:
        self.states[state.name] = state.to(self.device)
        if activate or self.active is None:
            self.active = state.name
        return state

    def remove(self, name: str) -> None:
        self.get(name)
        del self.states[name]
        self.prompt_tokens.delete_adapter(name)
        if self.active == name:
            self.active = next(iter(self.states), None)

    def extra_repr(self) -> str:
        return f"active={self.active!r}"
