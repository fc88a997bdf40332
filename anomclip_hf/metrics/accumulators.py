"""Batch-by-batch metric accumulators, so a whole category never has to sit in memory as float64.

PixelMetricAccumulator
  mode="exact":  keeps only what the metrics need, compactly: normal-pixel scores (float32),
                 anomalous-pixel scores (float32) and their region sizes (int32). Results are exact for
                 the float32-rounded scores (identical to the one-shot functions on float32 maps).
  mode="binned": constant memory. Histograms over fixed bins of a range known in advance
                 (score_range, default [0, 1]); thresholds are the bin edges. For AUPRO the per-region
                 histograms are pooled as one histogram weighted by 1/region_size (sum over regions of
                 hist_r / size_r), which gives the same mean overlap without storing one per region.
                 Pixel AP interpolates precision inside each bin (see _curves.average_precision).
ImageMetricAccumulator
  one score per image is small, so it is kept as given and computed exactly.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from . import _curves
from ._inputs import (
    as_binary,
    as_scores,
    check_both_classes,
    check_fpr_limit,
    check_same_shape,
    map_inputs,
)
from ._regions import region_sizes
from ..errors import ArgumentError


class PixelMetricAccumulator:
    """Pixel AUROC, AUPRO, pixel AP and pixel F1-max over all images fed with update(maps, masks)."""

    _NAME = "PixelMetricAccumulator"

    def __init__(
        self,
        mode: str = "exact",
        num_bins: int = 1000,
        score_range: Tuple[float, float] = (0.0, 1.0),
        fpr_limit: float = 0.3,
    ) -> None:
        if mode not in ("exact", "binned"):
            raise ArgumentError(f"{self._NAME}: mode must be 'exact' or 'binned', got {mode!r}")
        if int(num_bins) != num_bins or num_bins < 1:
            raise ArgumentError(f"{self._NAME}: num_bins must be a positive integer, got {num_bins!r}")
        lo, hi = (float(v) for v in score_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ArgumentError(f"{self._NAME}: score_range must be finite with min < max, got {score_range!r}")
        self.mode = mode
        self.num_bins = int(num_bins)
        self.score_range = (lo, hi)
        self.fpr_limit = check_fpr_limit(fpr_limit)
        self.reset()

    def reset(self) -> None:
        self.num_images = 0
        self._n_regions = 0
        # exact mode
        self._pos: List[np.ndarray] = []
        self._neg: List[np.ndarray] = []
        self._sizes: List[np.ndarray] = []
        # binned mode
        self._hist_pos = np.zeros(self.num_bins, dtype=np.int64)
        self._hist_neg = np.zeros(self.num_bins, dtype=np.int64)
        self._pro_hist = np.zeros(self.num_bins, dtype=np.float64)

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch: maps (N, H, W) or (H, W) scores, masks of the same shape with 0/1 values."""
        m, g = map_inputs(maps, masks, self._NAME)
        sizes, n_regions = region_sizes(g)
        if self.mode == "exact":
            self._pos.append(m[g].astype(np.float32, copy=False))
            self._neg.append(m[~g].astype(np.float32, copy=False))
            self._sizes.append(sizes)
        else:
            lo, hi = self.score_range
            outside = int(np.count_nonzero((m < lo) | (m > hi)))
            if outside:
                raise ArgumentError(
                    f"{self._NAME}: {outside} scores lie outside score_range [{lo}, {hi}] "
                    f"(min {m.min()}, max {m.max()}); binned mode needs the range in advance"
                )
            idx = _curves.bin_index(m, lo, hi, self.num_bins)
            idx_pos = idx[g]
            hist_pos = np.bincount(idx_pos, minlength=self.num_bins)
            self._hist_pos += hist_pos
            self._hist_neg += np.bincount(idx.reshape(-1), minlength=self.num_bins) - hist_pos
            self._pro_hist += np.bincount(idx_pos, weights=1.0 / sizes, minlength=self.num_bins)
        self._n_regions += n_regions
        self.num_images += m.shape[0]

    def _counts(self) -> _curves.Counts:
        if self.mode == "exact":
            pos = np.concatenate(self._pos) if self._pos else np.zeros(0, np.float32)
            neg = np.concatenate(self._neg) if self._neg else np.zeros(0, np.float32)
            check_both_classes(pos.size, neg.size, self._NAME, "masks")
            weights = 1.0 / np.concatenate(self._sizes)
            return _curves.exact_counts(pos, neg, weights, self._n_regions, overwrite_neg=True)
        check_both_classes(int(self._hist_pos.sum()), int(self._hist_neg.sum()), self._NAME, "masks")
        edges = _curves.bin_edges(*self.score_range, self.num_bins)
        return _curves.binned_counts(self._hist_pos, self._hist_neg, edges, self._pro_hist, self._n_regions)

    def compute(self) -> Dict[str, float]:
        """{'pixel_auroc', 'aupro', 'pixel_ap', 'pixel_f1_max', 'pixel_f1_threshold'} over all batches so far."""
        c = self._counts()  # both classes present implies at least one region
        f1, thr = _curves.f1_max(c)
        return {
            "pixel_auroc": _curves.roc_auc(c),
            "aupro": _curves.aupro(c, self.fpr_limit),
            "pixel_ap": _curves.average_precision(c, interpolate_bins=self.mode == "binned"),
            "pixel_f1_max": f1,
            "pixel_f1_threshold": thr,
        }


class ImageMetricAccumulator:
    """Image AUROC, AP and F1-max over image scores fed with update(scores, labels)."""

    _NAME = "ImageMetricAccumulator"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores: List[np.ndarray] = []
        self._labels: List[np.ndarray] = []

    def update(self, scores: Any, labels: Any) -> None:
        """Add a batch of image scores (N,) and 0/1 labels (N,)."""
        s = as_scores(scores, self._NAME)
        y = as_binary(labels, self._NAME)
        check_same_shape(s, y, self._NAME)
        self._scores.append(s.reshape(-1))
        self._labels.append(y.reshape(-1))

    def compute(self) -> Dict[str, float]:
        """{'image_auroc', 'image_ap', 'image_f1_max', 'image_f1_threshold'} over all batches so far."""
        s = np.concatenate(self._scores) if self._scores else np.zeros(0)
        y = np.concatenate(self._labels) if self._labels else np.zeros(0, bool)
        n_pos = int(y.sum())
        check_both_classes(n_pos, y.size - n_pos, self._NAME)
        c = _curves.exact_counts(s[y], s[~y], overwrite_neg=True)
        f1, thr = _curves.f1_max(c)
        return {
            "image_auroc": _curves.roc_auc(c),
            "image_ap": _curves.average_precision(c),
            "image_f1_max": f1,
            "image_f1_threshold": thr,
        }
