"""Anomaly detection metrics: image/pixel AUROC, AUPRO, F1-max, average precision.

One-shot functions take numpy arrays or torch tensors; accumulators take batches so large
categories fit in memory; load_evaluate_metric() gives the same image-level numbers as an
`evaluate` metric loaded by path.
"""

from .accumulators import ImageMetricAccumulator, PixelMetricAccumulator
from .evaluate_loader import METRIC_SCRIPT, load_evaluate_metric
from .functional import aupro, average_precision, decision_counts, f1_max, image_auroc, pixel_auroc

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "average_precision",
    "decision_counts",
    "PixelMetricAccumulator",
    "ImageMetricAccumulator",
    "load_evaluate_metric",
    "METRIC_SCRIPT",
]
