"""Load the packaged `evaluate` metric by file path, so it works offline (no Hub lookup)."""

from __future__ import annotations

import os

METRIC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anomaly_detection_metric.py")


def load_evaluate_metric(**kwargs):
    """evaluate.load(<path to anomaly_detection_metric.py>); kwargs go to evaluate.load.

    keep_in_memory defaults to True so compute() writes no Arrow cache files.
    """
    import evaluate  # imported lazily: evaluate/datasets are heavy and only needed here

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(METRIC_SCRIPT, **kwargs)
