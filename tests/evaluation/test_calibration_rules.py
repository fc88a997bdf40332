"""The calibration rules on score arrays: each threshold does what its rule promises, on many random sets,
counted here independently; the record keeps a bounded history."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from anomclip_hf.evaluation.calibration import (
    MAX_HISTORY,
    CalibrationData,
    CalibrationRule,
    calibrated_estimate,
    image_threshold,
    parse_target,
)


def _data(seed: int, normal: int = 25, abnormal: int = 15) -> CalibrationData:
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.beta(2, 8, normal), rng.beta(5, 4, abnormal)]
    labels = np.r_[np.zeros(normal, bool), np.ones(abnormal, bool)]
    return CalibrationData([f"{i}.png" for i in range(len(scores))], scores, labels, scores.copy(),
                           ["good"] * normal + ["crack"] * abnormal)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("target", [0.6, 0.9, 1.0])
def test_recall_rule(seed, target):
    data = _data(seed)
    threshold = image_threshold(CalibrationRule("recall", target=target), data)
    abnormal = data.abnormal_scores
    assert np.mean(abnormal >= threshold) >= target
    higher = abnormal[abnormal > threshold]
    assert not higher.size or np.mean(abnormal > higher.min()) < target  # the highest: past the next one misses


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("rate", [0.0, 0.04, 0.2])
def test_false_alarm_rule(seed, rate):
    data = _data(seed)
    threshold = image_threshold(CalibrationRule("false-alarm", target=rate), data)
    normal = data.normal_scores
    assert np.mean(normal >= threshold) <= rate
    lower = normal[normal < threshold]
    assert not lower.size or np.mean(normal >= lower.max()) > rate  # the lowest such threshold


@pytest.mark.parametrize("seed", range(20))
def test_f1_rule_reaches_the_best_f1(seed):
    data = _data(seed)
    threshold = image_threshold(CalibrationRule("f1"), data)
    best = max(f1_score(data.labels, data.scores >= t) for t in np.unique(data.scores))
    assert f1_score(data.labels, data.scores >= threshold) == pytest.approx(best, abs=1e-12)


def test_percentile_and_leave_one_out_rules():
    data = _data(0)
    rule = CalibrationRule("percentile", percentile=95, factor=1.1)
    assert image_threshold(rule, data) == pytest.approx(1.1 * np.percentile(data.normal_scores, 95))
    loo = CalibrationRule("leave-one-out", factor=1.25)
    assert image_threshold(loo, None, [0.1, 0.3, 0.2]) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="stores no leave-one-out scores"):
        image_threshold(loo, None, None)


@pytest.mark.parametrize("text, expected", [
    ("f1", CalibrationRule("f1")), ("recall=0.95", CalibrationRule("recall", target=0.95)),
    ("false-alarm=0.01", CalibrationRule("false-alarm", target=0.01)),
    ("FPR=0", CalibrationRule("false-alarm", target=0.0)), ("false_alarm=1", CalibrationRule("false-alarm", target=1)),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["recall", "recall=0", "recall=x", "f1=0.5", "precision=0.9", "false-alarm=-0.1"])
def test_parse_target_refuses(text):
    with pytest.raises(ValueError):
        parse_target(text)


def test_history_is_newest_first_and_bounded():
    metadata = {"decision_threshold": 0.2, "pixel_threshold": 0.3,
                "threshold_estimate": {"image": 0.2, "pixel": 0.3, "margin": 0.1, "method": "leave-one-out",
                                       "leave_one_out_image_scores": [0.1, 0.18],
                                       "leave_one_out_pixel_maxima": [0.2, 0.27]}}
    rule = CalibrationRule("f1")
    for step in range(MAX_HISTORY + 5):
        value = 0.1 + step / 1000
        metadata["threshold_estimate"] = calibrated_estimate(metadata, rule, value, 0.3, {"normal_images": 3},
                                                             when=f"t{step}")
        metadata["decision_threshold"] = value
    history = metadata["threshold_estimate"]["history"]
    assert len(history) == MAX_HISTORY
    assert history[0]["when"] == f"t{MAX_HISTORY + 3}" and history[0]["rule"] == {"name": "f1"}
    assert all("history" not in entry for entry in history)
    # the references' leave-one-out scores travel along: a leave-one-out calibration stays possible
    assert metadata["threshold_estimate"]["leave_one_out_image_scores"] == [0.1, 0.18]
