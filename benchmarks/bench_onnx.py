"""Deployment speed: an exported category on ONNX Runtime against the PyTorch forward it was exported from.

Paper backbone shapes (ViT-B-16-plus-240), random weights, a memory of 4 reference images, 400x400 blurred
maps, cached text prototypes: the graph `anomclip export` writes. Both run on the CPU with the same thread
count (ONNX Runtime intra-op threads = torch threads), interleaved; figures are medians. Also: the export
time, ONNX Runtime against PyTorch at batch 1 and 8, peak RSS of one batch, and (--int8) the dynamically
quantized graph with its score drift. Target: ONNX Runtime / PyTorch time <= 1.0.

    python benchmarks/bench_onnx.py [--batches 1 8] [--repeats 5] [--int8] [--threads 2] [--json]
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time

import numpy as np
import onnxruntime
import torch
from _common import (
    MIB,
    PeakRSS,
    apply_threads,
    base_parser,
    interleaved_times,
    median,
    paper_model,
    random_pixels,
    report,
)

from anomclip_hf.export import export_onnx

OUTPUT_SIZE = 400


def session(path: str, threads: int, arena: bool = True) -> onnxruntime.InferenceSession:
    """arena=False: ONNX Runtime frees its buffers after each run, so a run's peak memory can be measured
    (with its arena, the buffers of earlier runs stay allocated and the next run's peak shows as 0)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    return onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--references", type=int, default=4, help="reference images in the memory bank")
    parser.add_argument("--int8", action="store_true", help="also export and time the int8-quantized graph")
    args = parser.parse_args()
    apply_threads(args)
    threads = torch.get_num_threads()

    model = paper_model()
    model.add_category("bottle", reference_images=random_pixels(args.references, seed=1))
    folder = tempfile.mkdtemp(prefix="bench_onnx_")  # removed at exit
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    variants = {"float32": {}} | ({"int8": {"quantize": "int8"}} if args.int8 else {})
    sessions, paths, exports = {}, {}, {}
    for name, options in variants.items():
        path = os.path.join(folder, f"bottle-{name}.onnx")
        began = time.perf_counter()
        exported = export_onnx(model, path, output_size=OUTPUT_SIZE, **options)
        exports[name] = {"export_s": time.perf_counter() - began, "file_mib": os.path.getsize(path) / MIB,
                         "check": exported.check}
        sessions[name], paths[name] = session(path, threads), path

    def torch_forward(pixel_values):
        with torch.inference_mode():
            return model(pixel_values, output_size=OUTPUT_SIZE)

    results = {"settings": {"references": args.references, "output_size": OUTPUT_SIZE, "repeats": args.repeats,
                            "threads": threads, "onnxruntime": onnxruntime.__version__},
               "exports": exports, "batches": {}}
    lines = [f"exported category ({args.references} references, {OUTPUT_SIZE}x{OUTPUT_SIZE} blurred maps) on ONNX "
             f"Runtime {onnxruntime.__version__} ({threads} threads) vs the PyTorch forward; median of {args.repeats}"]
    lines += [f"export {name}: {info['export_s']:.1f} s, {info['file_mib']:.0f} MiB; max |ORT - PyTorch| on "
              f"{info['check']['images']} random inputs: scores {info['check']['max_abs_score_diff']:.2e}, maps "
              f"{info['check']['max_abs_map_diff']:.2e}" for name, info in exports.items()]
    for batch in args.batches:
        pixel_values = random_pixels(batch, seed=2)
        feed = {"pixel_values": pixel_values.numpy()}
        functions = {"pytorch": lambda: torch_forward(pixel_values)}
        functions |= {name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}
        times = interleaved_times(functions, args.repeats)
        seconds = {name: median(values) for name, values in times.items()}
        reference = torch_forward(pixel_values).image_scores.numpy()
        drift = {name: float(np.abs(s.run(None, feed)[0] - reference).max()) for name, s in sessions.items()}
        entry = {"seconds": seconds, "ms_per_image": {k: v / batch * 1e3 for k, v in seconds.items()},
                 "ratio_to_pytorch": {k: v / seconds["pytorch"] for k, v in seconds.items() if k != "pytorch"},
                 "max_abs_score_diff": drift, "times": times}
        lines.append(f"batch {batch}: " + " | ".join(
            f"{name} {seconds[name] / batch * 1e3:7.1f} ms/img" + (
                "" if name == "pytorch" else f" (ratio {seconds[name] / seconds['pytorch']:.3f}, "
                                             f"max |score diff| {drift[name]:.1e})")
            for name in seconds))
        if batch == max(args.batches):
            memory = {}
            probes = {"pytorch": functions["pytorch"]}
            probes |= {name: (lambda s=session(path, threads, arena=False): s.run(None, feed))
                       for name, path in paths.items()}
            for name, function in probes.items():
                function()  # first run: lazy initialisation is not part of a run's memory
                with PeakRSS() as peak:
                    function()
                memory[name] = peak.extra_bytes / MIB
            entry.update(peak_extra_rss_mib=memory, rss_method=peak.method)
            lines.append(f"batch {batch} peak RSS of one run above the loaded models (ONNX Runtime without its "
                         "memory arena): " + ", ".join(
                f"{name} {mib:.0f} MiB" for name, mib in memory.items()) + f" ({peak.method})")
        results["batches"][str(batch)] = entry
    report(args, results, lines)


if __name__ == "__main__":
    main()
