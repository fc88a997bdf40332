"""The image decision rule and the normalised score (torch-free: the ONNX Runtime detector uses them too)."""

from __future__ import annotations

import math
from typing import Optional

from ..errors import ArgumentError


def check_threshold(value, name: str = "threshold") -> Optional[float]:
    """A threshold given by a caller (None: none) as a float, if it is a finite number (the rule of --threshold),
    else a ValueError naming `name`: NaN would call every image "normal" and a string fail mid-run."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{name}={value!r}; expected a finite number (a NaN threshold calls every image normal)")
    return float(value)


def decision(score: float, threshold: Optional[float]) -> str:
    """"anomalous" at or above the threshold (the convention of `f1_max`'s threshold), else "normal";
    "" when no threshold is known."""
    return "" if threshold is None else ("anomalous" if score >= threshold else "normal")


def normalized_score(score: float, threshold: Optional[float]) -> Optional[float]:
    """The score on a 0-1 scale on which the decision threshold sits at 0.5, as anomalib users expect:
    score / (2 * threshold), clipped to [0, 1] (scores are >= 0, so 0 stays 0 and the order below 2x the
    threshold is kept). None without a positive threshold."""
    if threshold is None or threshold <= 0:
        return None
    return min(max(float(score) / (2.0 * float(threshold)), 0.0), 1.0)
