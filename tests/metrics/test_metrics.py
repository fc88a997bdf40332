"""Tests for anomclip_hf.metrics against scikit-learn and straightforward reference implementations."""

from __future__ import annotations

import socket
from bisect import bisect

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from anomclip_hf.metrics import (
    ImageMetricAccumulator,
    PixelMetricAccumulator,
    aupro,
    average_precision,
    f1_max,
    image_auroc,
    load_evaluate_metric,
    pixel_auroc,
)
from anomclip_hf.metrics._regions import region_sizes

# ----------------------------------------------------------------------------- reference implementations


def brute_force_f1_max(scores, labels):
    """F1 at every distinct score used as threshold (score >= t); ties keep the highest threshold."""
    scores, labels = np.ravel(scores), np.ravel(labels).astype(bool)
    best, best_t = -1.0, None
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:
            best, best_t = f1, t
    return best, best_t


def reference_aupro(maps, masks, fpr_limit=0.3):
    """Definition, written plainly: per image regions (3x3 ones), per threshold PRO/FPR, trapezoid to limit."""
    regions, normal = [], []
    for amap, mask in zip(maps, masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            regions.append(amap[labelled == k])
        normal.append(amap[mask == 0])
    normal = np.concatenate(normal)
    fprs, pros = [0.0], [0.0]  # threshold above every score
    for t in np.unique(np.concatenate([maps.ravel()]))[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def mvtec_compute_pro(maps, masks):
    """MVTec AD's reference `compute_pro`, restated: sort every pixel once, cumulate FP and per-region
    overlap changes, keep the last point of each run of tied scores, and close the curve at (1, 1)."""
    n_ok, n_regions = 0, 0
    fp_changes = np.zeros(maps.shape, dtype=np.uint32)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        n_regions += n
        ok = labelled == 0
        n_ok += int(ok.sum())
        fp_changes[i, ok] = 1
        for k in range(1, n + 1):
            region = labelled == k
            pro_changes[i, region] = 1.0 / region.sum()
    scores = np.asarray(maps, dtype=np.float64).ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    fprs = np.cumsum(fp_changes.ravel()[order], dtype=np.float64) / n_ok
    pros = np.cumsum(pro_changes.ravel()[order]) / n_regions
    keep = np.append(np.diff(scores) != 0, True)
    fprs, pros = np.clip(fprs[keep], None, 1.0), np.clip(pros[keep], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def mvtec_trapezoid(x, y, x_max):
    """MVTec AD's reference `trapezoid` with x_max: the area up to x_max, the last segment interpolated."""
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    inside = x <= x_max
    x, y = x[inside], y[inside]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def mvtec_aupro(maps, masks, fpr_limit=0.3):
    fprs, pros = mvtec_compute_pro(maps, masks)
    return mvtec_trapezoid(fprs, pros, fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------- data


def make_maps_and_masks(seed, n=8, h=32, w=32, levels=None):
    """Masks with several regions of different sizes (some touching borders, some images empty) and
    noisy float32 maps in [0, 1] that are higher on the regions."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        if i % 3 == 2:
            continue  # an image without anomaly
        for _ in range(rng.integers(1, 4)):
            rh, rw = rng.integers(1, h // 2), rng.integers(1, w // 2)
            y, x = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
            masks[i, y : y + rh, x : x + rw] = 1
    masks[0, -1, :5] = 1  # a region on the last row of image 0 ...
    masks[1, 0, :5] = 1  # ... and one on the first row of image 1: two regions, not one
    maps = 0.35 * rng.random((n, h, w)) + 0.4 * masks * rng.random((n, h, w)) + 0.2 * rng.random((n, 1, 1))
    maps = np.clip(maps, 0, 1).astype(np.float32)
    if levels is not None:
        maps = (np.round(maps * levels) / levels).astype(np.float32)  # many ties
    return maps, masks


# ----------------------------------------------------------------------------- image-level metrics


@pytest.mark.parametrize("tied", [False, True])
def test_image_metrics_match_sklearn(tied):
    rng = np.random.default_rng(1)
    labels = (rng.random(500) < 0.3).astype(int)
    scores = rng.normal(size=500) + labels
    if tied:
        scores = np.round(scores, 1)
    assert abs(image_auroc(scores, labels) - roc_auc_score(labels, scores)) < 1e-9
    assert abs(average_precision(scores, labels) - average_precision_score(labels, scores)) < 1e-9
    f1, thr = f1_max(scores, labels)
    ref_f1, ref_thr = brute_force_f1_max(scores, labels)
    assert abs(f1 - ref_f1) < 1e-12 and thr == ref_thr


def test_image_metrics_accept_torch_and_maps():
    maps, masks = make_maps_and_masks(2, levels=50)
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    assert abs(image_auroc(torch.from_numpy(maps), torch.from_numpy(masks)) - ref) < 1e-9
    assert abs(image_auroc(maps, masks.astype(bool)) - ref) < 1e-9
    half = torch.from_numpy(maps).to(torch.bfloat16)
    expected = roc_auc_score(masks.ravel(), half.float().numpy().ravel())
    assert abs(image_auroc(half, torch.from_numpy(masks)) - expected) < 1e-9


def test_image_accumulator_matches_functions():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.4).astype(int)
    scores = np.round(rng.random(300) + 0.3 * labels, 2)
    acc = ImageMetricAccumulator()
    for sl in np.array_split(np.arange(300), 7):
        acc.update(torch.from_numpy(scores[sl]), labels[sl])
    out = acc.compute()
    assert out["image_auroc"] == pytest.approx(image_auroc(scores, labels), abs=1e-12)
    assert out["image_ap"] == pytest.approx(average_precision(scores, labels), abs=1e-12)
    assert (out["image_f1_max"], out["image_f1_threshold"]) == f1_max(scores, labels)


# ----------------------------------------------------------------------------- pixel-level metrics


@pytest.mark.parametrize("levels", [None, 20])
def test_pixel_metrics_exact_match_sklearn(levels):
    maps, masks = make_maps_and_masks(4, levels=levels)
    assert abs(pixel_auroc(maps, masks) - roc_auc_score(masks.ravel(), maps.ravel())) < 1e-9
    acc = PixelMetricAccumulator(mode="exact")
    acc.update(maps, masks)
    out = acc.compute()
    assert abs(out["pixel_auroc"] - roc_auc_score(masks.ravel(), maps.ravel())) < 1e-9
    assert abs(out["pixel_ap"] - average_precision_score(masks.ravel(), maps.ravel())) < 1e-9
    ref_f1, ref_thr = brute_force_f1_max(maps, masks)
    assert abs(out["pixel_f1_max"] - ref_f1) < 1e-12 and out["pixel_f1_threshold"] == ref_thr


def test_pixel_metrics_binned_close_to_sklearn():
    maps, masks = make_maps_and_masks(5, n=16, h=64, w=64)
    acc = PixelMetricAccumulator(mode="binned")
    for sl in np.array_split(np.arange(16), 4):
        acc.update(maps[sl], masks[sl])
    out = acc.compute()
    assert abs(out["pixel_auroc"] - roc_auc_score(masks.ravel(), maps.ravel())) < 1e-3
    assert abs(out["pixel_ap"] - average_precision_score(masks.ravel(), maps.ravel())) < 1e-3
    assert abs(out["pixel_f1_max"] - f1_max(maps, masks)[0]) < 2e-3
    assert abs(out["aupro"] - aupro(maps, masks)) < 1e-3


@pytest.mark.parametrize("seed,levels", [(6, None), (7, 500), (8, 30), (11, 7)])
def test_aupro_matches_reference(seed, levels):
    """Exact AUPRO equals two independent references to 1e-12 (measured: <= 2.2e-16 against MVTec's
    compute_pro + trapezoid, <= 2e-15 against the per-threshold definition), with ties (levels) and
    several regions per image; binned mode within its stated 1e-3."""
    maps, masks = make_maps_and_masks(seed, n=6, h=24, w=24, levels=levels)
    assert sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks) >= 6  # several regions
    if levels is not None:
        assert np.unique(maps).size < maps.size // 4  # many ties
    ref = mvtec_aupro(maps, masks)
    assert 0.05 < ref < 0.95  # a non-trivial case
    for limit in (0.3, 0.05, 1.0):
        expected = mvtec_aupro(maps, masks, limit)
        assert abs(aupro(maps, masks, fpr_limit=limit) - expected) < 1e-12, limit
        assert abs(reference_aupro(maps, masks, limit) - expected) < 1e-12, limit  # the references agree
    exact = PixelMetricAccumulator(mode="exact")
    for part in np.array_split(np.arange(len(maps)), 3):
        exact.update(maps[part], masks[part])
    assert abs(exact.compute()["aupro"] - ref) < 1e-12
    binned = PixelMetricAccumulator(mode="binned")
    binned.update(maps, masks)
    assert abs(binned.compute()["aupro"] - ref) < 1e-3


def test_aupro_known_cases():
    _, masks = make_maps_and_masks(9)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(1.0 - masks.astype(np.float32), masks) == pytest.approx(0.0, abs=1e-12)
    assert pixel_auroc(masks.astype(np.float32), masks) == 1.0
    # 8-connectivity: two diagonal pixels are one region, so detecting only the separate single-pixel region
    # gives PRO 1/2 at FPR 0 (not 1/3), and the curve then goes linearly to (1, 1)
    mask = np.zeros((1, 8, 8), dtype=np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 5, 5] = 1
    amap = np.zeros((1, 8, 8), dtype=np.float32)
    amap[0, 5, 5] = 1.0
    assert aupro(amap, mask) == pytest.approx((0.5 + 0.65) / 2, abs=1e-12)


def test_regions_do_not_cross_images():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, -1, :] = True
    masks[1, 0, :] = True
    sizes, n = region_sizes(masks)
    assert n == 2 and sizes.tolist() == [4] * 8


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_pixel_accumulator_batches_equal_one_shot(mode):
    maps, masks = make_maps_and_masks(10, n=9)
    one = PixelMetricAccumulator(mode=mode)
    one.update(maps, masks)
    many = PixelMetricAccumulator(mode=mode)
    for sl in np.array_split(np.arange(9), 4):
        many.update(torch.from_numpy(maps[sl]), torch.from_numpy(masks[sl]))
    a, b = one.compute(), many.compute()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    if mode == "exact":
        assert a["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)
        assert a["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
        assert a["pixel_ap"] == pytest.approx(average_precision(maps, masks), abs=1e-12)
        assert (a["pixel_f1_max"], a["pixel_f1_threshold"]) == pytest.approx(f1_max(maps, masks), abs=1e-12)


# ----------------------------------------------------------------------------- edge cases


def test_one_class_raises():
    scores = np.random.default_rng(0).random(10)
    for fn in (image_auroc, average_precision, f1_max):
        with pytest.raises(ValueError, match=rf"{fn.__name__}: labels contain only class 0 .*both"):
            fn(scores, np.zeros(10))
        with pytest.raises(ValueError, match=rf"{fn.__name__}: labels contain only class 1 .*both"):
            fn(scores, np.ones(10))
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(ValueError, match="pixel_auroc: masks contain only class 0"):
        pixel_auroc(maps, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="aupro: masks contain no anomalous region"):
        aupro(maps, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="aupro: masks contain only class 1"):
        aupro(maps, np.ones((2, 8, 8)))
    for mode in ("exact", "binned"):
        acc = PixelMetricAccumulator(mode=mode)
        acc.update(maps, np.zeros((2, 8, 8)))
        with pytest.raises(ValueError, match="PixelMetricAccumulator: masks contain only class 0"):
            acc.compute()
        with pytest.raises(ValueError, match="PixelMetricAccumulator: no data"):
            PixelMetricAccumulator(mode=mode).compute()
    acc = ImageMetricAccumulator()
    acc.update([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="ImageMetricAccumulator: labels contain only class 1"):
        acc.compute()


def test_empty_masks_in_some_images_are_fine():
    maps, masks = make_maps_and_masks(11, n=6, h=16, w=16)
    masks[3:] = 0
    assert masks[:3].any()
    assert abs(aupro(maps, masks) - reference_aupro(maps, masks)) < 1e-3


def test_constant_scores():
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    scores = np.full(8, 0.7)
    assert image_auroc(scores, labels) == 0.5
    assert average_precision(scores, labels) == pytest.approx(labels.mean(), abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx((2 * 2 / (2 * 2 + 6), 0.7))
    _, masks = make_maps_and_masks(12, n=3, h=8, w=8)
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    assert pixel_auroc(maps, masks) == 0.5
    # curve goes straight from (0, 0) to (1, 1): area up to 0.3 is 0.3 * 0.15, normalised 0.15
    assert aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    binned = PixelMetricAccumulator(mode="binned")
    binned.update(maps, masks)
    out = binned.compute()
    assert out["pixel_auroc"] == pytest.approx(0.5, abs=1e-12) and out["aupro"] == pytest.approx(0.15, abs=1e-12)
    assert out["pixel_ap"] == pytest.approx(masks.mean(), abs=1e-12)


def test_nan_and_inf_scores_raise():
    scores = np.random.default_rng(0).random(20)
    scores[[1, 5, 7]] = np.nan
    scores[9] = np.inf
    labels = np.arange(20) % 2
    for fn in (image_auroc, average_precision, f1_max):
        with pytest.raises(ValueError, match=rf"{fn.__name__}: scores contain 3 NaN and 1 inf"):
            fn(scores, labels)
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    maps[0, 0, 0] = np.nan
    masks = np.zeros((2, 4, 4))
    masks[0, 1, 1] = 1
    with pytest.raises(ValueError, match="pixel_auroc: anomaly maps contain 1 NaN"):
        pixel_auroc(torch.from_numpy(maps), masks)
    with pytest.raises(ValueError, match="aupro: anomaly maps contain 1 NaN"):
        aupro(maps, masks)
    with pytest.raises(ValueError, match="PixelMetricAccumulator: anomaly maps contain 1 NaN"):
        PixelMetricAccumulator().update(maps, masks)
    with pytest.raises(ValueError, match="ImageMetricAccumulator: scores contain 3 NaN"):
        ImageMetricAccumulator().update(scores, labels)


def test_shape_mismatch_and_bad_masks_raise():
    maps = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match=r"pixel_auroc: shape mismatch .*\(2, 8, 8\).*\(2, 8, 9\)"):
        pixel_auroc(maps, np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match=r"aupro: shape mismatch .*\(2, 8, 8\).*\(2, 1, 8, 8\)"):
        aupro(maps, np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"PixelMetricAccumulator: shape mismatch .*\(2, 8, 8\).*\(1, 8, 8\)"):
        PixelMetricAccumulator().update(maps, np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"image_auroc: shape mismatch .*\(3,\).*\(4,\)"):
        image_auroc([0.1, 0.2, 0.3], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="pixel_auroc: masks must contain only 0 and 1"):
        pixel_auroc(maps, np.full((2, 8, 8), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match="image_auroc: labels must contain only 0 and 1"):
        image_auroc([0.1, 0.2, 0.3], [0, 1, 2])


def test_bad_options_raise():
    with pytest.raises(ValueError, match="aupro: fpr_limit must be in"):
        aupro(np.zeros((1, 2, 2)), np.eye(2)[None], fpr_limit=0.0)
    with pytest.raises(ValueError, match="mode must be"):
        PixelMetricAccumulator(mode="approx")
    acc = PixelMetricAccumulator(mode="binned", score_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"2 scores lie outside score_range \[0.0, 1.0\]"):
        acc.update(np.array([[[-0.1, 0.5], [1.5, 0.2]]]), np.eye(2)[None])
    wide = PixelMetricAccumulator(mode="binned", score_range=(-1.0, 2.0), num_bins=3000)
    maps, masks = make_maps_and_masks(13, n=4, h=16, w=16)
    wide.update(maps * 3 - 1, masks)
    assert wide.compute()["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-3)


# ----------------------------------------------------------------------------- evaluate module


def test_evaluate_metric_loads_by_path_offline(monkeypatch):
    for var in ("HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    metric = load_evaluate_metric()
    rng = np.random.default_rng(14)
    labels = (rng.random(200) < 0.4).astype(int)
    scores = np.round(rng.random(200) + 0.5 * labels, 2)
    out = metric.compute(predictions=scores, references=labels)
    assert out["image_auroc"] == pytest.approx(image_auroc(scores, labels), abs=1e-12)
    assert out["average_precision"] == pytest.approx(average_precision(scores, labels), abs=1e-12)
    assert (out["f1_max"], out["f1_threshold"]) == f1_max(scores, labels)
    for sl in np.array_split(np.arange(200), 3):  # batch-wise use through evaluate's add_batch
        metric.add_batch(predictions=scores[sl], references=labels[sl])
    assert metric.compute() == out
    with pytest.raises(ValueError, match="image_auroc: labels contain only class 0"):
        metric.compute(predictions=[0.1, 0.2], references=[0, 0])


def test_results_are_python_floats():
    maps, masks = make_maps_and_masks(15, n=3, h=8, w=8)
    for mode in ("exact", "binned"):
        acc = PixelMetricAccumulator(mode=mode)
        acc.update(maps, masks)
        assert all(type(v) is float for v in acc.compute().values())
    assert all(type(v) is float for v in (aupro(maps, masks), pixel_auroc(maps, masks), *f1_max(maps, masks)))


def test_the_evaluate_metric_without_evaluate_says_which_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "evaluate", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ImportError, match=r"anomclip-hf\[evaluate\]"):
        load_evaluate_metric()
