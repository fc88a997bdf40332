"""Turning user inputs (numpy arrays, torch tensors, lists) into validated numpy arrays.

Every public metric goes through these helpers so a bad input fails the same way everywhere, with a
message naming the metric, instead of producing a silently wrong number.
"""

from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np
from ..errors import ArgumentError


def to_numpy(x: Any) -> np.ndarray:
    """Torch tensor / array-like -> numpy array, without importing torch ourselves."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # numpy has no bfloat16; float32 holds both exactly
        return x.numpy()
    return np.asarray(x)


def as_scores(x: Any, metric: str, what: str = "scores") -> np.ndarray:
    """Float scores, keeping float32/float64 as given (no float64 copy of big float32 maps)."""
    a = to_numpy(x)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype.kind in "biu":
        a = a.astype(np.float64)
    elif a.dtype not in (np.float32, np.float64):
        raise ArgumentError(f"{metric}: {what} must be real numbers, got dtype {a.dtype}")
    check_finite(a, metric, what)
    return a


def check_finite(a: np.ndarray, metric: str, what: str = "scores") -> None:
    finite = np.isfinite(a)
    if not finite.all():
        n_nan = int(np.isnan(a).sum())
        n_inf = int(a.size - finite.sum()) - n_nan
        raise ArgumentError(f"{metric}: {what} contain {n_nan} NaN and {n_inf} inf values; all scores must be finite")


def as_binary(x: Any, metric: str, what: str = "labels") -> np.ndarray:
    """0/1 (or bool) labels/masks -> bool array; anything else (e.g. 0/255 masks) is an error."""
    a = to_numpy(x)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "biuf":
        raise ArgumentError(f"{metric}: {what} must be 0/1 or bool, got dtype {a.dtype}")
    bad = (a != 0) & (a != 1)
    if bad.any():
        examples = np.unique(a[bad])[:5].tolist()
        raise ArgumentError(
            f"{metric}: {what} must contain only 0 and 1; found {int(bad.sum())} other values (e.g. {examples})"
        )
    return a != 0


def check_same_shape(scores: np.ndarray, labels: np.ndarray, metric: str, names=("scores", "labels")) -> None:
    if scores.shape != labels.shape:
        raise ArgumentError(
            f"{metric}: shape mismatch between {names[0]} {tuple(scores.shape)} and {names[1]} {tuple(labels.shape)}"
        )


def check_both_classes(n_pos: int, n_neg: int, metric: str, what: str = "labels") -> None:
    if n_pos == 0 or n_neg == 0:
        present = "1 (anomalous)" if n_neg == 0 else "0 (normal)"
        if n_pos == 0 and n_neg == 0:
            raise ArgumentError(f"{metric}: no data; both normal (0) and anomalous (1) {what} are needed")
        raise ArgumentError(
            f"{metric}: {what} contain only class {present}; both normal (0) and anomalous (1) are needed"
        )


def binary_inputs(scores: Any, labels: Any, metric: str, names=("scores", "labels")) -> Tuple[np.ndarray, np.ndarray]:
    """Validated, flattened (scores, bool labels) with both classes present."""
    s = as_scores(scores, metric, names[0])
    y = as_binary(labels, metric, names[1])
    check_same_shape(s, y, metric, names)
    s, y = s.reshape(-1), y.reshape(-1)
    n_pos = int(y.sum())
    check_both_classes(n_pos, y.size - n_pos, metric, names[1])
    return s, y


def map_inputs(maps: Any, masks: Any, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """Validated (N,H,W) maps and bool masks; a single (H,W) map is treated as N=1."""
    m = as_scores(maps, metric, "anomaly maps")
    g = as_binary(masks, metric, "masks")
    check_same_shape(m, g, metric, ("anomaly maps", "masks"))
    if m.ndim == 2:
        m, g = m[None], g[None]
    if m.ndim != 3:
        raise ArgumentError(f"{metric}: anomaly maps must have shape (N, H, W) or (H, W), got {tuple(m.shape)}")
    return m, g


def check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ArgumentError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit
