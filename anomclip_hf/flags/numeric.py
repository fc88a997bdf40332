"""argparse types for numeric flags: one rule, and one message pattern, for every command.

    parser.add_argument("--shots", type=positive_int)    # "argument --shots: expected an integer >= 1, got '0'"

Integers must be whole numbers in their range; floats must be finite (no nan/inf) and in their range.
"""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Callable, Optional

from ..errors import ArgumentError

# Decision thresholds, stored or given: scores are in [0, 1]; 0 would call every image anomalous, so a threshold
# must be > 0; a leave-one-out estimate is (1 + margin) x a reference's score and may pass 1 (then every image is
# "normal"): up to 2 is accepted. One rule for category.json, --threshold and the Python API.
THRESHOLD_RANGE = (0.0, 2.0)
THRESHOLD_EXPECTED = (f"a number greater than {THRESHOLD_RANGE[0]:g} and at most {THRESHOLD_RANGE[1]:g} "
                      "(scores are in [0, 1])")

# Largest anomaly-map side (--output-size): a 2048x2048 float32 map is 16 MB per image, in memory and per batch.
MAX_OUTPUT_SIZE = 2048


def _number(text: str) -> float:
    """`text` as a float; NaN when it is no number (so each parser's range check refuses it with its own words)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _integer(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = f"integer_from_{minimum}"
    return parse


def _real(minimum: Optional[float] = None) -> Callable[[str], float]:
    expected = "a finite number" + ("" if minimum is None else f" >= {minimum:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "finite_number"
    return parse


def check_output_size(value) -> Optional[int]:
    """`value` (None: the model input size) if it is an anomaly-map side 1..MAX_OUTPUT_SIZE, else a ValueError
    (0 used to fall back to the default silently, a negative size to end in a traceback)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_OUTPUT_SIZE:
        raise ArgumentError(f"output_size={value!r}; expected 1..{MAX_OUTPUT_SIZE} (or None: the model input size)")
    return value


positive_int = _integer(1)  # counts of things that must exist: shots, batch size, resolution
nonnegative_int = _integer(0)  # epochs (0: no training where allowed), seeds, checkpoint counts
finite_float = _real()  # thresholds, margins
nonnegative_float = _real(0.0)  # learning rates, momentum, weight decay, loss weights


def fraction(text: str) -> float:
    """A finite number greater than 0 and at most 1, e.g. --coreset-ratio (1: everything)."""
    value = _number(text)
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0 and at most 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number greater than 0, e.g. calibrate's --percentile and --factor."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def threshold_value(text: str) -> float:
    """A decision threshold (--threshold): the range rule of stored thresholds, (0, 2]."""
    value = _number(text)
    low, high = THRESHOLD_RANGE
    if not math.isfinite(value) or not low < value <= high:
        raise argparse.ArgumentTypeError(f"expected {THRESHOLD_EXPECTED}, got {text!r}")
    return value


def sensitivity_value(text: str) -> float:
    """A sensitivity (--sensitivity): a number from 0 to 1; 0.5 is the stored threshold."""
    value = _number(text)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1 (0.5: the stored threshold), got {text!r}")
    return value


def int_range(minimum: int, maximum: int) -> Callable[[str], int]:
    """An integer in minimum..maximum, e.g. --output-size (int_range(1, MAX_OUTPUT_SIZE))."""
    return _integer(minimum, maximum)
