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


# The highest image score (and map value) each scoring can give. Text and CLIP-memory terms are in [0, 1]; the
# DINOv2 memory's 1 - cos is in [0, 2]. The fusion h(a, b) = ab / (a + b) grows in both, so with a memory (both
# terms) its maximum is h(max a, max b): 1/2 with the CLIP memory, 2/3 with a DINOv2 one; without a memory the
# text term alone scores, up to 1.
MAX_SCORE_BY_MEMORY = {None: 1.0, "clip": 0.5, "dino": 2.0 / 3.0}


def max_reachable_score(memory: Optional[str]) -> float:
    """The highest score a category scores with memory None (text only), "clip" or "dino"."""
    return MAX_SCORE_BY_MEMORY[memory]


def unreachable_threshold(value, memory: Optional[str]) -> Optional[str]:
    """None when a stored threshold `value` (a finite number > 0, or None) can be reached by some score of a
    category with this memory; otherwise what is expected. A threshold no score reaches calls every image
    "normal"."""
    if value is None:
        return None
    top = max_reachable_score(memory)
    if value > top:
        kind = {None: "without a memory", "clip": "with the CLIP memory", "dino": "with a DINOv2 memory"}[memory]
        return (f"at most {top:.4g}, the highest score a category {kind} can give (a higher threshold calls "
                "every image normal)")
    return None
