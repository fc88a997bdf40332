"""Load the packaged `evaluate` metric by file path, so it works offline (no Hub lookup). The `evaluate` library is
an optional extra (`pip install "anomclip-hf[evaluate]"`): nothing else in the package needs it."""

from __future__ import annotations

import os

METRIC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anomaly_detection_metric.py")


def load_evaluate_metric(**kwargs):
    """evaluate.load(<path to anomaly_detection_metric.py>); kwargs go to evaluate.load.

    keep_in_memory defaults to True so compute() writes no Arrow cache files.
    """
    try:
        import evaluate  # imported lazily: heavy, optional, and only needed here
    except ImportError:
        raise ImportError('load_evaluate_metric needs the Hugging Face `evaluate` library: pip install '
                          '"anomclip-hf[evaluate]" (or pip install evaluate); the plain functions of '
                          'anomclip_hf.metrics compute the same numbers without it') from None

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(METRIC_SCRIPT, **kwargs)
