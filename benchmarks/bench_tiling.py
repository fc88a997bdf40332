"""Tiled scoring at native resolution against resizing the whole image (docs/guides/tiling.md).

Paper backbone shapes (ViT-B-16-plus-240, random weights). Printed:
- cost: seconds per megapixel and peak RSS above the loaded model, tiled (--tile, default auto) vs resized, for
  inputs of 1, 4 and 16 megapixels (square surfaces from `render_surface`), interleaved, medians over
  --repeats. The memory of both is 16384 random unit rows per layer (the default coreset size), so the search
  costs what a fitted category's would.
- AUROC (--auroc): image and pixel AUROC of tiled vs resized on generated 1024 px surfaces with 4-12 px defects
  (`render_highres_sample`), memory mode, the memory fitted from --auroc-references generated references.

    python benchmarks/bench_tiling.py --megapixels 1 4 16 --repeats 1
    python benchmarks/bench_tiling.py --megapixels 1 --repeats 1 --auroc --auroc-images 2
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from _common import MIB, PeakRSS, apply_threads, base_parser, median, paper_model, report

from anomclip_hf.data.synthetic_images import render_highres_sample, render_surface
from anomclip_hf.io.tiling import TilingSpec, parse_overlap, parse_tile
from anomclip_hf.memory.policy import DEFAULT_MAX_EXACT_ROWS
from anomclip_hf.model import tiling as model_tiling

CATEGORY = "sheet"


def _random_memory(model, rows: int, seed: int = 0) -> None:
    """A category whose memory is `rows` random unit rows per layer (the search cost of a fitted coreset)."""
    generator = torch.Generator().manual_seed(seed)
    model.add_category(CATEGORY)
    layout = model.memory_layout()
    layers = [torch.nn.functional.normalize(torch.randn(rows, layout.width, generator=generator), dim=-1)
              for _ in layout.layers]
    record = {"method": "random", "size": rows, "rows": rows, "seed": seed, "projection_dim": None,
              "coverage_radius": [0.0] * len(layers)}
    model.get_category(CATEGORY).set_memory([layer.to(model.device) for layer in layers], record, 1)


def _timed(function, repeats: int) -> tuple[list[float], int]:
    seconds, peaks = [], []
    for _ in range(repeats):
        with PeakRSS() as peak:
            began = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - began)
        peaks.append(peak.extra_bytes)
    return seconds, max(peaks)


def cost(model, megapixels: list[float], spec: TilingSpec, repeats: int) -> tuple[list, list[str]]:
    rows, lines = [], []
    whole = TilingSpec(1 << 20)  # a tile larger than any input: the whole image, resized (the untiled path)
    for mp in megapixels:
        side = int(round(math.sqrt(mp * 1e6)))
        image = render_surface(CATEGORY, f"cost{side}", side)
        grid = model_tiling.model_tile_grid(model, spec, side, side)
        measured = {}
        for name, chosen in (("resized", whole), ("tiled", spec)):  # alternating within a size, resized first
            seconds, peak = _timed(lambda: model_tiling.score_tiled_image(model, image, chosen, CATEGORY), repeats)
            measured[name] = {"s_per_mp": median(seconds) / (side * side / 1e6), "peak_mib": peak / MIB}
        row = {"megapixels": side * side / 1e6, "side": side, "tiles": grid.count if grid else 1,
               "tile": grid.tile if grid else None, **measured}
        rows.append(row)
        lines.append(f"{side} x {side} px ({row['megapixels']:.1f} MP): "
                     + (f"{grid.describe()}; " if grid else "one tile; ")
                     + f"resized {measured['resized']['s_per_mp']:.2f} s/MP, peak +{measured['resized']['peak_mib']:.0f} "
                     f"MiB; tiled {measured['tiled']['s_per_mp']:.2f} s/MP, peak +{measured['tiled']['peak_mib']:.0f} MiB "
                     f"({measured['tiled']['s_per_mp'] / measured['resized']['s_per_mp']:.1f}x the time)")
    return rows, lines


def auroc(model, spec: TilingSpec, images: int, references: int, size: int) -> tuple[dict, list[str]]:
    from sklearn.metrics import roc_auc_score

    refs = [render_highres_sample(CATEGORY, f"train/{i}", size, 0).image for i in range(references)]
    tests = ([render_highres_sample(CATEGORY, f"test/good/{i}", size, 0) for i in range(images)]
             + [render_highres_sample(CATEGORY, f"test/bad/{i}", size, 2, (4, 12)) for i in range(images)])
    tiles = model_tiling.encode_tiled_references(model, refs, spec, spill=True, progress=True)
    model_tiling.add_tiled_category(model, "tiled", tiles, spec)
    model.add_category("resized", reference_images=refs)
    labels = [int(s.mask.any()) for s in tests]
    masks = np.concatenate([(s.mask > 0).ravel() for s in tests])
    result = {}
    for name, chosen in (("tiled", spec), ("resized", TilingSpec(1 << 20))):
        scored = [model_tiling.score_tiled_image(model, s.image, chosen, name, "memory") for s in tests]
        result[name] = {"image_auroc": roc_auc_score(labels, [r.image_score for r in scored]),
                        "pixel_auroc": roc_auc_score(masks, np.concatenate([r.anomaly_map.ravel() for r in scored]))}
    line = (f"AUROC on {images} + {images} generated {size} px surfaces (4-12 px defects), {references} references, "
            f"memory mode: image tiled {result['tiled']['image_auroc']:.3f} vs resized "
            f"{result['resized']['image_auroc']:.3f}; pixel tiled {result['tiled']['pixel_auroc']:.4f} vs resized "
            f"{result['resized']['pixel_auroc']:.4f}")
    return result, [line]


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tile", type=parse_tile, default="auto")
    parser.add_argument("--tile-overlap", type=parse_overlap, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--auroc", action="store_true", help="also the AUROC comparison (slow on a CPU)")
    parser.add_argument("--auroc-images", type=int, default=4, help="normal and defective test images each")
    parser.add_argument("--auroc-references", type=int, default=2)
    parser.add_argument("--auroc-size", type=int, default=1024)
    args = parser.parse_args()
    apply_threads(args)
    model = paper_model()
    spec = TilingSpec(args.tile, args.tile_overlap)
    _random_memory(model, DEFAULT_MAX_EXACT_ROWS)
    results, lines = {}, [f"tiling: {spec.describe()}; memory {DEFAULT_MAX_EXACT_ROWS} rows per layer"]
    if args.megapixels:
        results["cost"], more = cost(model, args.megapixels, spec, args.repeats)
        lines += more
    if args.auroc:
        results["auroc"], more = auroc(model, TilingSpec(240 if args.tile == "auto" else args.tile, args.tile_overlap),
                                       args.auroc_images, args.auroc_references, args.auroc_size)
        lines += more
    report(args, results, lines)


if __name__ == "__main__":
    main()
