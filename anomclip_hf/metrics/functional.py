"""One-shot metric functions on whole arrays (numpy or torch), exact computation.

For data that does not fit in memory at once, use the accumulators in accumulators.py, which build
the same Counts batch by batch.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple


from . import _curves
from ._inputs import as_binary, as_scores, binary_inputs, check_both_classes, check_fpr_limit, check_same_shape, map_inputs
from ._regions import region_sizes
from ..errors import ArgumentError


def _counts(scores: Any, labels: Any, metric: str) -> _curves.Counts:
    s, y = binary_inputs(scores, labels, metric)
    return _curves.exact_counts(s[y], s[~y], overwrite_neg=True)


def image_auroc(scores: Any, labels: Any) -> float:
    """ROC AUC of scores against 0/1 labels (any matching shapes, flattened); same as sklearn roc_auc_score."""
    return _curves.roc_auc(_counts(scores, labels, "image_auroc"))


def average_precision(scores: Any, labels: Any) -> float:
    """Step-wise average precision, same as sklearn average_precision_score."""
    return _curves.average_precision(_counts(scores, labels, "average_precision"))


def f1_max(scores: Any, labels: Any) -> Tuple[float, float]:
    """(best F1 over all thresholds, that threshold); predict anomalous when score >= threshold."""
    return _curves.f1_max(_counts(scores, labels, "f1_max"))


def decision_counts(scores: Any, labels: Any, threshold: float) -> Dict[str, Optional[float]]:
    """What deciding "anomalous" at score >= threshold does on 0/1 labels: the confusion counts (tp, fp, tn, fn)
    and precision, recall and false-alarm rate (the fraction of normal images flagged); a rate whose
    denominator is 0 (no positives, no negatives, nothing flagged) is None, never NaN."""
    s = as_scores(scores, "decision_counts").reshape(-1)
    y = as_binary(labels, "decision_counts").reshape(-1)
    check_same_shape(s, y, "decision_counts")
    flagged = s >= float(threshold)
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    fn, tn = int((~flagged & y).sum()), int((~flagged & ~y).sum())

    def ratio(numerator: int, denominator: int) -> Optional[float]:
        return None if denominator == 0 else numerator / denominator

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = None if precision is None or recall is None else (0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision,
            "recall": recall, "false_alarm_rate": ratio(fp, fp + tn), "f1": f1}


def pixel_auroc(maps: Any, masks: Any) -> float:
    """ROC AUC over all pixels of all maps pooled (one curve for the whole category)."""
    m, g = map_inputs(maps, masks, "pixel_auroc")
    n_pos = int(g.sum())
    check_both_classes(n_pos, g.size - n_pos, "pixel_auroc", "masks")
    return _curves.roc_auc(_curves.exact_counts(m[g], m[~g], overwrite_neg=True))


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve for FPR in [0, fpr_limit].

    PRO(t) = mean over all connected GT regions (all images) of the fraction of the region >= t;
    FPR(t) = fraction of all normal pixels >= t. Same as MVTec AD's compute_pro + trapezoid_area.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    m, g = map_inputs(maps, masks, "aupro")
    sizes, n_regions = region_sizes(g)
    if n_regions == 0:
        raise ArgumentError("aupro: masks contain no anomalous region (mask == 1); at least one region is needed")
    check_both_classes(sizes.size, g.size - sizes.size, "aupro", "masks")
    return _curves.aupro(_curves.exact_counts(m[g], m[~g], 1.0 / sizes, n_regions, overwrite_neg=True), fpr_limit)
