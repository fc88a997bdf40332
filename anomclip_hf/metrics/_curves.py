"""Counting core shared by every metric: how many positives / negatives score >= each threshold.

All metrics (AUROC, AP, F1-max, AUPRO) are functions of these counts, so exact and binned modes only
differ in how the counts are built (the thresholds where curves bend vs. fixed histogram edges).
Working from sorted per-class copies (instead of an argsort over all pixels) keeps memory at one
float32 copy per pixel for float32 maps; the exact counts only list thresholds around the positive
scores, so nothing else per pixel is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass
class Counts:
    """Counts at thresholds sorted in *decreasing* order; a sample is "positive" when score >= threshold."""

    thresholds: np.ndarray  # (M,) decreasing
    tp: np.ndarray  # (M,) positives with score >= threshold
    fp: np.ndarray  # (M,) negatives with score >= threshold
    n_pos: int
    n_neg: int
    pro_sum: Optional[np.ndarray] = None  # (M,) sum over covered positive pixels of 1/region_size
    n_regions: int = 0


def exact_counts(
    pos: np.ndarray,
    neg: np.ndarray,
    pos_weights: Optional[np.ndarray] = None,
    n_regions: int = 0,
    overwrite_neg: bool = False,
) -> Counts:
    """Exact counts at every threshold where a curve can change direction; ties handled exactly.

    Every metric here is a function of the points (FP(t), TP(t)) (or (FP(t), PRO(t))) over the distinct
    score values t, as sklearn's _binary_clf_curve lists them. Between two adjacent distinct *positive*
    scores only FP moves, so the points there lie on one horizontal segment and need not be listed. Kept:
    every distinct positive score u, the next float above it (t = nextafter(u) counts the scores > u, the
    end of the segment before u) and the lowest score (the (N, P) corner). Areas (ROC, PRO up to any FPR
    limit), AP, F1-max and its threshold come out as over all distinct values (sklearn), but only the
    negatives are sorted and nothing per pixel is built after that.

    pos_weights (optional, same length as pos) are per-pixel 1/region_size used for PRO.
    overwrite_neg: sort `neg` in place (saves a copy of the largest array when the caller owns it).
    """
    dtype = np.result_type(pos.dtype, neg.dtype)
    pos = pos.astype(dtype, copy=False)
    neg_sorted = neg.astype(dtype, copy=not overwrite_neg)  # a private (or given-up) array, sorted in place
    neg_sorted.sort()
    if pos_weights is None:
        pos_sorted = np.sort(pos)
    else:
        order = np.argsort(pos, kind="stable")  # needed to carry the weights along
        pos_sorted = pos[order]
        w_sorted = pos_weights[order]
        del order
    lowest = [min(pos_sorted[:1].min(initial=np.inf), neg_sorted[:1].min(initial=np.inf))]
    candidates = np.concatenate([pos_sorted, np.nextafter(pos_sorted, dtype.type(np.inf)), np.asarray(lowest, dtype)])
    thr = np.unique(candidates)  # increasing, at most 2 * positives + 1 values
    # number of samples >= t = size - (number < t)
    tp = pos_sorted.size - np.searchsorted(pos_sorted, thr, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, thr, side="left")
    above_all = (tp + fp) == 0  # thresholds above every score: the (0, 0) start point again
    thr, tp, fp = thr[~above_all], tp[~above_all], fp[~above_all]
    pro_sum = None
    if pos_weights is not None:
        # weight of positives >= t via a suffix sum (reverse cumsum keeps small tails accurate)
        suffix = np.zeros(pos_sorted.size + 1, dtype=np.float64)
        suffix[:-1] = np.cumsum(w_sorted[::-1], dtype=np.float64)[::-1]
        pro_sum = suffix[np.searchsorted(pos_sorted, thr, side="left")][::-1]
    return Counts(thr[::-1], tp[::-1], fp[::-1], int(pos.size), int(neg_sorted.size), pro_sum, n_regions)


def bin_edges(lo: float, hi: float, num_bins: int) -> np.ndarray:
    """Lower edges of the bins; these are the thresholds of binned mode."""
    return lo + (hi - lo) * np.arange(num_bins, dtype=np.float64) / num_bins


def bin_index(scores: np.ndarray, lo: float, hi: float, num_bins: int) -> np.ndarray:
    """Bin of each score in [lo, hi]; hi itself goes into the last bin."""
    idx = np.floor((scores - lo) * (num_bins / (hi - lo))).astype(np.int64)
    np.clip(idx, 0, num_bins - 1, out=idx)
    return idx


def binned_counts(
    hist_pos: np.ndarray,
    hist_neg: np.ndarray,
    edges: np.ndarray,
    pro_hist: Optional[np.ndarray] = None,
    n_regions: int = 0,
) -> Counts:
    """Counts at the bin edges from histograms: samples >= edge k are those in bins k..B-1."""
    tp = np.cumsum(hist_pos[::-1])
    fp = np.cumsum(hist_neg[::-1])
    pro_sum = None if pro_hist is None else np.cumsum(pro_hist[::-1])
    return Counts(edges[::-1], tp, fp, int(hist_pos.sum()), int(hist_neg.sum()), pro_sum, n_regions)


def roc_auc(c: Counts) -> float:
    """Trapezoidal area under the ROC curve starting at (0, 0), exactly as sklearn's roc_auc_score."""
    fpr = np.concatenate([[0.0], c.fp / c.n_neg])
    tpr = np.concatenate([[0.0], c.tp / c.n_pos])
    return float(np.trapezoid(tpr, fpr))


def average_precision(c: Counts, interpolate_bins: bool = False) -> float:
    """Step-wise AP = sum_k (R_k - R_{k-1}) P_k, as sklearn's average_precision_score.

    Exact mode: ties are one step with the precision at its end, exactly like sklearn.
    Binned mode (interpolate_bins=True): a bin is not a true tie, so treating it as one biases AP down
    by ~1/num_bins. Instead positives and negatives are assumed evenly interleaved inside each bin and
    the precision is averaged along the bin (PR interpolation of Davis & Goadrich, 2006).
    """
    if not interpolate_bins:
        predicted = c.tp + c.fp  # > 0: every exact threshold is some sample's score
        return float(np.sum(np.diff(c.tp, prepend=0) / c.n_pos * (c.tp / predicted)))
    tp0 = np.concatenate([[0], c.tp[:-1]]).astype(np.float64)
    fp0 = np.concatenate([[0], c.fp[:-1]]).astype(np.float64)
    a = c.tp - tp0  # positives in the bin
    b = c.fp - fp0  # negatives in the bin
    e, d = a + b, tp0 + fp0
    step = a > 0
    a, b, e, d, tp0, fp0 = a[step], b[step], e[step], d[step], tp0[step], fp0[step]
    # mean of (tp0 + a s) / (d + e s) over s in [0, 1]; first non-empty bin (d == 0) has constant precision
    first = d == 0
    safe_d = np.where(first, 1.0, d)
    mean_precision = a / e + np.where(first, 0.0, (tp0 * b - a * fp0) / e**2 * np.log1p(e / safe_d))
    return float(np.sum(a / c.n_pos * mean_precision))


def f1_max(c: Counts) -> Tuple[float, float]:
    """Best F1 = 2TP / (TP + FP + P) over thresholds; ties go to the highest threshold."""
    f1 = 2.0 * c.tp / (c.tp + c.fp + c.n_pos)
    k = int(np.argmax(f1))
    return float(f1[k]), float(c.thresholds[k])


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under y(x) for x in [0, x_max], interpolating the point at x_max exactly.

    Same as trapezoid_area in the MVTec AD evaluation code; x must be non-decreasing and reach >= x_max.
    """
    ins = int(np.searchsorted(x, x_max, side="right"))
    area = float(np.trapezoid(y[:ins], x[:ins])) if ins > 1 else 0.0
    if ins < x.size and x[ins - 1] < x_max:
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return float(area)


def aupro(c: Counts, fpr_limit: float) -> float:
    """Area under the PRO-vs-FPR curve up to fpr_limit, divided by fpr_limit (so a perfect map gives 1)."""
    fpr = np.concatenate([[0.0], c.fp / c.n_neg])
    pro = np.concatenate([[0.0], c.pro_sum / c.n_regions])
    return float(area_up_to(fpr, pro, fpr_limit) / fpr_limit)
