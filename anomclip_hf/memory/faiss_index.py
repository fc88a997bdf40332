"""An optional faiss index behind the memory search (`pip install anomclip-hf[faiss]`, faiss-cpu).

Exact inner product only (IndexFlatIP): the same nearest neighbours as the torch search (tests hold them equal
to 1e-5). An approximate index would need its recall measured first; none is offered.
The index of a bank is built once and remembered while the bank tensor lives unchanged, as the search's bf16
copy is.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

_INDEXES: dict = {}  # id(bank) -> (weak reference to the bank, its version, the faiss index)


def faiss_module():
    """The faiss module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError("search='faiss' needs faiss: pip install 'anomclip-hf[faiss]' (or pip install faiss-cpu)"
                          ) from error
    return faiss


def exact_index(bank: torch.Tensor):
    """faiss.IndexFlatIP holding the bank's rows (R, W), cached per bank tensor."""
    key = id(bank)
    cached = _INDEXES.get(key)
    if cached is not None and cached[0]() is bank and cached[1] == bank._version:
        return cached[2]
    if cached is None:
        weakref.finalize(bank, _INDEXES.pop, key, None)
    faiss = faiss_module()
    rows = np.ascontiguousarray(bank.detach().reshape(-1, bank.shape[-1]).float().cpu().numpy())
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    _INDEXES[key] = (weakref.ref(bank), bank._version, index)
    return index


def faiss_nearest_similarity(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(Q,) highest inner product of each query row over the bank, by faiss' exact flat index (on the CPU)."""
    index = exact_index(bank)
    values, _ = index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), 1)
    return torch.from_numpy(values[:, 0].copy()).to(queries.device)
