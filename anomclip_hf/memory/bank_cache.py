"""What the search derives from a memory bank (its bf16 copy, a faiss index), built once per bank tensor."""

from __future__ import annotations

import weakref
from typing import Callable

import torch


def per_bank(store: dict, bank: torch.Tensor, build: Callable[[torch.Tensor], object]):
    """`build(bank)`, remembered in `store` while the bank lives unchanged (a memory bank is module state that
    serves many forwards: rebuilding what the search derives from it each time would cost a good part of the
    search). Kept beside the tensor, not on it, so nothing extra is pickled with the model; an entry leaves
    with its bank. A bank made under inference_mode has no version to key on: built anew."""
    if bank.is_inference():
        return build(bank)
    key = id(bank)
    cached = store.get(key)
    if cached is not None and cached[0]() is bank and cached[1] == bank._version:
        return cached[2]
    if cached is None:
        weakref.finalize(bank, store.pop, key, None)
    value = build(bank)
    store[key] = (weakref.ref(bank), bank._version, value)
    return value
