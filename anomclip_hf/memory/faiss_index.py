"""An optional faiss index behind the memory search (`pip install anomclip-hf[faiss]`, faiss-cpu).

Exact inner product only (IndexFlatIP): the same nearest neighbours as the torch search (tests hold them equal
to 1e-5). An approximate index would need its recall measured first; none is offered.
The index of a bank is built once and remembered while the bank tensor lives unchanged, as the search's bf16
copy is.
"""

from __future__ import annotations

import numpy as np
import torch

from .bank_cache import per_bank

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
    """faiss.IndexFlatIP holding the bank's rows (R, W), built once per bank tensor (`bank_cache.per_bank`)."""
    return per_bank(_INDEXES, bank, _build_index)


def _build_index(bank: torch.Tensor):
    faiss = faiss_module()
    rows = np.ascontiguousarray(bank.detach().reshape(-1, bank.shape[-1]).float().cpu().numpy())
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    return index


def faiss_nearest_similarity(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(Q,) highest inner product of each query row over the bank, by faiss' exact flat index (on the CPU)."""
    index = exact_index(bank)
    values, _ = index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), 1)
    return torch.from_numpy(values[:, 0].copy()).to(queries.device)
