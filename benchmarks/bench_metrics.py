"""Speed and memory of the pixel metrics at data-set scale, against scikit-learn in the same run.

    python benchmarks/bench_metrics.py [--images 40] [--size 400] [--batch 8]

Maps are random scores with blob-shaped defects; figures: wall time and peak traced memory of
scikit-learn's pixel AUROC, our exact accumulator (AUROC + AUPRO + AP + F1) and the binned accumulator.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anomclip_hf.metrics import PixelMetricAccumulator


def make_data(images: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=np.uint8)
    for index in range(images // 2, images):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - size // 8, 2)
            masks[index, y: y + rng.integers(4, size // 8), x: x + rng.integers(4, size // 8)] = 1
    maps = np.clip(rng.normal(0.3, 0.1, masks.shape) + 0.3 * masks, 0, 1).astype(np.float32)
    return np.stack([ndimage.gaussian_filter(m, 2) for m in maps]).astype(np.float32), masks


def measure(function):
    tracemalloc.start()
    began = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    maps, masks = make_data(args.images, args.size)

    def accumulate(mode):
        accumulator = PixelMetricAccumulator(mode=mode)
        for start in range(0, len(maps), args.batch):
            accumulator.update(maps[start: start + args.batch], masks[start: start + args.batch])
        return accumulator.compute()

    sk, sk_s, sk_mb = measure(lambda: roc_auc_score(masks.ravel(), maps.ravel()))
    exact, ex_s, ex_mb = measure(lambda: accumulate("exact"))
    binned, bi_s, bi_mb = measure(lambda: accumulate("binned"))
    pixels = maps.size
    print(f"{args.images} maps of {args.size}x{args.size} = {pixels / 1e6:.1f} M pixels, batches of {args.batch}")
    print(f"scikit-learn roc_auc_score (AUROC only)   {sk_s:7.2f} s  peak {sk_mb:8.1f} MiB")
    print(f"exact accumulator (AUROC, AUPRO, AP, F1)   {ex_s:7.2f} s  peak {ex_mb:8.1f} MiB  "
          f"time x{ex_s / sk_s:.2f} of sklearn  |AUROC diff| {abs(exact['pixel_auroc'] - sk):.1e}")
    print(f"binned accumulator (AUROC, AUPRO, AP, F1)  {bi_s:7.2f} s  peak {bi_mb:8.1f} MiB  "
          f"time x{bi_s / sk_s:.2f} of sklearn  |AUROC diff| {abs(binned['pixel_auroc'] - sk):.1e}  "
          f"|AUPRO diff vs exact| {abs(binned['aupro'] - exact['aupro']):.1e}")


if __name__ == "__main__":
    main()
