"""The decision rule's knobs: the threshold range (stored and given alike) and the sensitivity mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anomclip_hf.model.adapter_schema import THRESHOLD_RANGE
from anomclip_hf.model.decisions import (
    MIN_SENSITIVITY_THRESHOLD,
    check_threshold,
    decision,
    normalized_score,
    resolve_threshold,
    sensitivity_for_threshold,
    threshold_for_sensitivity,
)

STORED = [0.013, 0.25, 0.7, 1.0, 1.6, 2.0]


@pytest.mark.parametrize("stored", STORED)
def test_half_sensitivity_is_the_stored_threshold(stored):
    assert threshold_for_sensitivity(0.5, stored) == stored
    assert sensitivity_for_threshold(stored, stored) == 0.5


@pytest.mark.parametrize("stored", STORED)
def test_the_mapping_is_monotone_and_round_trips_inside_the_threshold_range(stored):
    sensitivities = np.linspace(0, 1, 101)
    thresholds = [threshold_for_sensitivity(float(s), stored) for s in sensitivities]
    assert all(a >= b for a, b in zip(thresholds, thresholds[1:]))  # more sensitive: never a higher threshold
    assert all(check_threshold(t) == t for t in thresholds)  # every one a valid threshold, (0, 2]
    exact = [(s, t) for s, t in zip(sensitivities, thresholds) if MIN_SENSITIVITY_THRESHOLD < t < 2]
    assert len(exact) >= 45  # stored 2: the lower half of the knob is clipped at 2
    assert all(a > b for (_, a), (_, b) in zip(exact, exact[1:]))  # strictly, where nothing is clipped
    for s, t in exact:
        assert t == pytest.approx(2 * stored * (1 - s), rel=1e-12)
        assert sensitivity_for_threshold(t, stored) == pytest.approx(s, abs=1e-12)
    for t in np.linspace(MIN_SENSITIVITY_THRESHOLD, min(2.0, 2 * stored), 37):
        assert threshold_for_sensitivity(sensitivity_for_threshold(float(t), stored), stored) == \
            pytest.approx(t, rel=1e-9)
    assert thresholds[-1] == MIN_SENSITIVITY_THRESHOLD and thresholds[0] == min(2.0, 2 * stored)


@pytest.mark.parametrize("stored", STORED)
def test_sensitivity_decides_as_the_normalised_score_read_the_other_way(stored):
    # flagged at sensitivity s  <=>  normalised score >= 1 - s (the anomalib convention, 0.5 at the threshold)
    rng = np.random.default_rng(0)
    for score in rng.uniform(0, 1, 200):
        for s in (0.0, 0.1, 0.37, 0.5, 0.8, 1.0):
            threshold = threshold_for_sensitivity(s, stored)
            if not MIN_SENSITIVITY_THRESHOLD < threshold < 2:
                continue  # clipped into the threshold range
            flagged = decision(score, threshold) == "anomalous"
            normalised = normalized_score(score, stored)
            if not math.isclose(normalised, 1 - s, abs_tol=1e-12):  # ties: float rounding decides either way
                assert flagged == (normalised >= 1 - s)


@pytest.mark.parametrize("value", [-0.1, 1.0001, math.nan, math.inf, "0.5", True])
def test_sensitivity_outside_0_1_is_refused(value):
    with pytest.raises(ValueError, match="sensitivity=.*expected a number from 0 to 1"):
        threshold_for_sensitivity(value, 0.3)


def test_sensitivity_needs_a_stored_threshold_and_excludes_an_explicit_one():
    assert resolve_threshold(0.4) == 0.4
    assert resolve_threshold(0.4, threshold=0.1) == 0.1
    assert resolve_threshold(0.4, sensitivity=0.75) == pytest.approx(0.2)
    assert resolve_threshold(None) is None
    with pytest.raises(ValueError, match="none is stored"):
        resolve_threshold(None, sensitivity=0.5)
    with pytest.raises(ValueError, match="not both"):
        resolve_threshold(0.4, threshold=0.1, sensitivity=0.5)
    with pytest.raises(ValueError, match="thresholds from 0 to 2 x the stored"):
        sensitivity_for_threshold(0.9, 0.4)


@pytest.mark.parametrize("value", [-1, 0, 0.0, 2.0001, 5, math.nan, -math.inf])
def test_given_thresholds_follow_the_stored_range(value):
    low, high = THRESHOLD_RANGE
    assert (low, high) == (0.0, 2.0)
    with pytest.raises(ValueError, match=r"threshold=.*expected a number greater than 0 and at most 2"):
        check_threshold(value)


@pytest.mark.parametrize("value", [1e-9, 0.5, 2, 2.0])
def test_thresholds_inside_the_range_pass(value):
    assert check_threshold(value) == float(value)
