"""The coreset's greedy k-center selection at 1 and 2 torch threads: it must not slow down with more threads.

The greedy loop runs many small (512-row block x few kept rows) products; with several threads each one pays
the thread pool's start-up and contention, which once made two threads 10x slower than one; the loop now runs
at `GREEDY_THREADS` (1) whatever the caller's setting, compared here with the loop at the caller's. Same input all
times: 58,800 random unit rows of width 896 (k = 261 images of 225 patches, the paper backbone's memory
width), projected as `select_coreset` does, 5,880 rows kept (10 %). The runs alternate (1 2 1 2 ...), figures
are medians, and the selected indices are compared (they must be identical).

    python benchmarks/bench_coreset_threads.py [--rows 58800] [--size 5880] [--width 896] [--repeats 3] [--json]
"""

from __future__ import annotations

import os
import time

import torch
from _common import base_parser, machine, median, report

from anomclip_hf.memory.coreset import (
    GREEDY_THREADS,
    greedy_k_center,
    johnson_lindenstrauss_dim,
    project_rows,
    random_projection,
)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--rows", type=int, default=58_800)
    parser.add_argument("--size", type=int, default=5_880)
    parser.add_argument("--width", type=int, default=896)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = torch.nn.functional.normalize(torch.randn(args.rows, args.width, generator=torch.Generator().manual_seed(0)),
                                         dim=1)
    dim = johnson_lindenstrauss_dim(args.rows)
    points = project_rows(rows, random_projection(args.width, dim, 0))
    before = torch.get_num_threads()
    # (torch threads set by the caller, threads of the greedy loop: GREEDY_THREADS, or None = the caller's)
    variants = {f"{n} thread(s), loop at {GREEDY_THREADS} (default)": (n, GREEDY_THREADS) for n in args.thread_counts}
    variants.update({f"{n} thread(s), loop at the caller's": (n, None) for n in args.thread_counts
                     if n != GREEDY_THREADS})
    times = {name: [] for name in variants}
    selections = {}
    for _ in range(args.repeats):
        for name, (threads, loop_threads) in variants.items():
            torch.set_num_threads(threads)
            began = time.perf_counter()
            selections[name] = greedy_k_center(points, args.size, seed=0, threads=loop_threads)
            times[name].append(time.perf_counter() - began)
    torch.set_num_threads(before)
    medians = {n: median(t) for n, t in times.items()}
    first = next(iter(variants))
    same = all(torch.equal(selections[first], s) for s in selections.values())
    lines = [f"greedy k-center {args.rows} -> {args.size} rows (projected width {dim}, from {args.width}); median of "
             f"{args.repeats}, interleaved; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs"]
    for name, seconds in medians.items():
        lines.append(f"  {name:42s} {seconds:7.2f} s ({seconds / args.size * 1e3:.2f} ms a step), "
                     f"{seconds / medians[first]:.2f}x the first")
    lines.append(f"  same selected indices at every thread count: {same}")
    report(args, {"medians_s": medians, "times": times, "same_indices": same, "projected_width": dim,
                  "load_average": os.getloadavg(), "machine": machine()}, lines)


if __name__ == "__main__":
    main()
