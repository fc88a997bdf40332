"""The image decision rule, the normalised score and the sensitivity knob (torch-free: the ONNX Runtime
detector, the server and the app use them too).

Sensitivity: the one user-facing knob over a stored threshold T, a number s in [0, 1]:

    threshold(s) = 2 T (1 - s)            s = 1 - threshold / (2 T)

s = 0.5 is T itself; a higher sensitivity is a lower threshold (more images flagged), so the map is strictly
decreasing in s and its inverse gives s back. It is the normalised score read the other way: an image is
flagged at sensitivity s exactly when its normalised score (score / 2T, clipped to [0, 1]) is at least 1 - s.
s = 0 flags only scores of 2T or more, s = 1 flags every image. The threshold is kept inside the range of every
threshold, (0, 2]: at most 2 (a stored T above 1 and a low s), at least MIN_SENSITIVITY_THRESHOLD (s = 1 flags
every image scoring above it); between those bounds the map is exact.
"""

from __future__ import annotations

import math
from typing import Optional

from ..errors import ArgumentError
from ..flags.numeric import THRESHOLD_EXPECTED, THRESHOLD_RANGE

DEFAULT_SENSITIVITY = 0.5
MIN_SENSITIVITY_THRESHOLD = 1e-6  # sensitivity 1: every image scoring above a millionth (scores are in [0, 1])


def check_threshold(value, name: str = "threshold") -> Optional[float]:
    """A threshold given by a caller (None: none) as a float, if it follows the rule of stored thresholds
    (a finite number in (0, 2]), else a ValueError naming `name`: NaN would call every image "normal", 0 or
    less every image "anomalous", and a string fail mid-run."""
    if value is None:
        return None
    low, high = THRESHOLD_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not low < value <= high:
        raise ArgumentError(f"{name}={value!r}; expected {THRESHOLD_EXPECTED}")
    return float(value)


def check_sensitivity(value, name: str = "sensitivity") -> Optional[float]:
    """A sensitivity (None: none) as a float in [0, 1], else a ValueError naming `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not 0 <= value <= 1:
        raise ArgumentError(f"{name}={value!r}; expected a number from 0 to 1 (0.5: the stored threshold)")
    return float(value)


def threshold_for_sensitivity(sensitivity: float, stored_threshold: float) -> float:
    """The decision threshold of a sensitivity in [0, 1] over a stored threshold T: 2 T (1 - s) (see the module
    docstring: 0.5 -> T, monotone decreasing, inverse `sensitivity_for_threshold`)."""
    sensitivity = check_sensitivity(sensitivity)
    stored = _stored(stored_threshold)
    return min(max(2.0 * stored * (1.0 - sensitivity), MIN_SENSITIVITY_THRESHOLD), THRESHOLD_RANGE[1])


def sensitivity_for_threshold(threshold: float, stored_threshold: float) -> float:
    """The sensitivity that gives `threshold` over a stored threshold T: 1 - threshold / 2T; a ValueError for a
    threshold outside [0, 2T], which no sensitivity reaches."""
    stored = _stored(stored_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or \
            not 0 <= threshold <= 2 * stored:
        raise ArgumentError(f"threshold={threshold!r}; a sensitivity reaches thresholds from 0 to 2 x the stored "
                         f"{stored:g} only")
    return 1.0 - float(threshold) / (2.0 * stored)


def resolve_threshold(stored_threshold: Optional[float], threshold: Optional[float] = None,
                      sensitivity: Optional[float] = None) -> Optional[float]:
    """The threshold a run decides with: an explicit `threshold`, else `sensitivity` over the stored one, else
    the stored one (None: none known). Both given, or a sensitivity without a stored threshold: a ValueError."""
    if threshold is not None and sensitivity is not None:
        raise ArgumentError("give a threshold or a sensitivity, not both")
    if threshold is not None:
        return check_threshold(threshold)
    if sensitivity is None:
        return stored_threshold
    if stored_threshold is None:
        raise ArgumentError("a sensitivity is relative to the stored decision threshold, but none is stored; "
                         "pass a threshold instead (or calibrate one: anomclip calibrate)")
    return threshold_for_sensitivity(sensitivity, stored_threshold)


def _stored(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"stored threshold {value!r}; expected a positive number")
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
