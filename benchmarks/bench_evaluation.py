"""Evaluation speed and memory: pixel AUROC + AUPRO + F1-max of a test split, against scikit-learn.

A split of `--images` maps at 400x400 (default 200 images = 32 M pixels), half of them with blob-shaped
defects; the maps are fed batch by batch, as `anomclip evaluate` does. Measured for each accumulator mode
(exact, binned) and for scikit-learn's roc_auc_score on the same pixels (AUROC only), interleaved, medians;
peak memory is the RSS above the process before the call (the maps and masks already exist).
Target: <= 5 s and <= 1 GiB peak extra memory for the three metrics.

    python benchmarks/bench_evaluation.py [--images 200] [--size 400] [--batch 16] [--repeats 3] [--json]
"""

from __future__ import annotations

import numpy as np
from _common import (
    MIB,
    PeakRSS,
    apply_threads,
    base_parser,
    interleaved_times,
    median,
    report,
)
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anomclip_hf.metrics import PixelMetricAccumulator


def make_split(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps (smooth noise, raised softly over the defects: pixel AUROC about 0.9) and 0/1 uint8 masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=np.uint8)
    for index in range(images // 2, images):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - size // 8, 2)
            masks[index, y: y + rng.integers(4, size // 8), x: x + rng.integers(4, size // 8)] = 1
    maps = np.empty(masks.shape, dtype=np.float32)
    for index in range(images):
        noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 4)
        defect = ndimage.gaussian_filter(masks[index].astype(np.float64), 4)
        maps[index] = np.clip(0.3 + 0.05 * noise / noise.std() + 0.1 * defect, 0, 1)
    return maps, masks


def evaluate(maps: np.ndarray, masks: np.ndarray, mode: str, batch: int) -> dict:
    accumulator = PixelMetricAccumulator(mode=mode)
    for start in range(0, len(maps), batch):
        accumulator.update(maps[start: start + batch], masks[start: start + batch])
    return accumulator.compute()


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    apply_threads(args)
    maps, masks = make_split(args.images, args.size)

    runs = {"sklearn_auroc": lambda: roc_auc_score(masks.ravel(), maps.ravel()),
            "exact": lambda: evaluate(maps, masks, "exact", args.batch),
            "binned": lambda: evaluate(maps, masks, "binned", args.batch)}
    values = {name: run() for name, run in runs.items()}  # also the warm-up round
    times = interleaved_times(runs, args.repeats, warmup=0)
    memory = {}
    for name, run in runs.items():
        with PeakRSS() as peak:
            run()
        memory[name] = peak
    reference = values["sklearn_auroc"]
    results = {"settings": {"images": args.images, "size": args.size, "pixels": int(maps.size), "batch": args.batch,
                            "repeats": args.repeats, "rss_method": memory["exact"].method},
               "sklearn_auroc": reference}
    lines = [f"{args.images} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f} M pixels, batches of "
             f"{args.batch}; median of {args.repeats}; peak RSS above the inputs ({memory['exact'].method})",
             f"{'scikit-learn roc_auc_score (AUROC only)':44s} {median(times['sklearn_auroc']):6.2f} s  "
             f"{memory['sklearn_auroc'].extra_bytes / MIB:7.0f} MiB"]
    for mode in ("exact", "binned"):
        seconds, extra = median(times[mode]), memory[mode].extra_bytes / MIB
        metrics = values[mode]
        results[mode] = {"seconds": seconds, "times": times[mode], "peak_extra_rss_mib": extra,
                         "time_ratio_to_sklearn": seconds / median(times["sklearn_auroc"]),
                         "auroc_minus_sklearn": metrics["pixel_auroc"] - reference, "metrics": metrics}
        lines.append(f"{mode + ' accumulator (AUROC, AUPRO, AP, F1-max)':44s} {seconds:6.2f} s  {extra:7.0f} MiB  "
                     f"x{seconds / median(times['sklearn_auroc']):.2f} of sklearn's time  AUROC - sklearn "
                     f"{metrics['pixel_auroc'] - reference:+.1e}")
    results["sklearn_seconds"] = median(times["sklearn_auroc"])
    results["sklearn_peak_extra_rss_mib"] = memory["sklearn_auroc"].extra_bytes / MIB
    exact, binned = values["exact"], values["binned"]
    differences = {name: binned[name] - exact[name] for name in ("pixel_auroc", "aupro", "pixel_f1_max", "pixel_ap")}
    results["binned_minus_exact"] = differences
    lines.append("binned - exact: " + ", ".join(f"{name} {value:+.1e}" for name, value in differences.items()))
    report(args, results, lines)


if __name__ == "__main__":
    main()
