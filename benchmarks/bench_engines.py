"""Engines side by side on the paper shape: ONNX Runtime, OpenVINO (f32 and bf16) and PyTorch (fp32 and bf16
autocast towers), one exported category, batch 1 and 8.

Paper backbone shapes (ViT-B-16-plus-240), random weights, a memory of 4 reference images, 400x400 blurred
maps, cached text prototypes: the graph `anomclip export` writes, and the PyTorch forward it came from. Every
engine runs with the same thread count (torch threads), interleaved; figures are medians of the engine's own
step (no decoding or preprocessing). Printed: ms per image, the ratio to PyTorch fp32, the largest score and
map difference to PyTorch fp32, and the fastest engine measured. Targets: OpenVINO f32 <= 0.9x PyTorch fp32;
the default engine is the fastest measured one.

    python benchmarks/bench_engines.py [--batches 1 8] [--repeats 5] [--threads 2] [--json]
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import onnxruntime
import torch
from _common import apply_threads, base_parser, interleaved_times, median, paper_model, random_pixels, report

from anomclip_hf.export import export_onnx
from anomclip_hf.model.precision import resolve_precision, tower_autocast

OUTPUT_SIZE = 400


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--references", type=int, default=4)
    args = parser.parse_args()
    apply_threads(args)
    threads = torch.get_num_threads()

    model = paper_model()
    model.add_category("bottle", reference_images=random_pixels(args.references, seed=1))
    folder = tempfile.mkdtemp(prefix="bench_engines_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "bottle.onnx")
    export_onnx(model, path, output_size=OUTPUT_SIZE)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    ort = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    engines = {"onnxruntime": lambda feed: ort.run(None, feed)}
    try:
        from anomclip_hf.export import OpenVinoAnomalyDetector

        for precision in ("fp32", "bf16"):
            detector = OpenVinoAnomalyDetector(path, precision=precision, threads=threads)
            engines[f"openvino {precision}"] = lambda feed, d=detector: d.infer(feed)
    except ImportError as error:
        print(f"OpenVINO skipped: {error}")
    choices = {"fp32": resolve_precision("fp32", "cpu"), "bf16": resolve_precision("bf16", "cpu")}

    def pytorch(precision):
        def run(feed):
            with torch.inference_mode(), tower_autocast(choices[precision], "cpu"):
                out = model(torch.from_numpy(feed["pixel_values"]), output_size=OUTPUT_SIZE)
            return out.image_scores.numpy(), out.anomaly_maps.numpy()
        return run

    engines = {"pytorch fp32": pytorch("fp32"), "pytorch bf16": pytorch("bf16"), **engines}
    lines = [f"engines on the paper shape ({args.references} references, {OUTPUT_SIZE}x{OUTPUT_SIZE} maps), {threads} "
             f"threads, median of {args.repeats}, interleaved; load average {os.getloadavg()[0]:.2f} at the start"]
    results = {"settings": {"threads": threads, "repeats": args.repeats, "onnxruntime": onnxruntime.__version__},
               "batches": {}}
    for batch in args.batches:
        feed = {"pixel_values": random_pixels(batch, seed=2).numpy()}
        times = interleaved_times({name: (lambda f=f: f(feed)) for name, f in engines.items()}, args.repeats)
        seconds = {name: median(values) for name, values in times.items()}
        reference = engines["pytorch fp32"](feed)
        drift = {}
        for name, engine in engines.items():
            scores, maps = engine(feed)
            drift[name] = (float(np.abs(np.asarray(scores) - reference[0]).max()),
                           float(np.abs(np.asarray(maps) - reference[1]).max()))
        base = seconds["pytorch fp32"]
        fastest = min(seconds, key=seconds.get)
        lines.append(f"batch {batch} (load average {os.getloadavg()[0]:.2f}):")
        for name, value in seconds.items():
            lines.append(f"  {name:14s} {value / batch * 1e3:8.1f} ms/img  {value / base:.3f}x pytorch fp32  "
                         f"max |diff| scores {drift[name][0]:.1e}, maps {drift[name][1]:.1e}")
        lines.append(f"  fastest measured: {fastest}")
        if not args.json:  # as it comes: a slow machine still shows the batches done
            print("\n".join(lines), flush=True)
            lines = []
        results["batches"][str(batch)] = {"seconds": seconds, "ratio_to_pytorch_fp32": {
            k: v / base for k, v in seconds.items()}, "drift": drift, "fastest": fastest, "times": times,
            "load_average": os.getloadavg()}
    report(args, results, lines)


if __name__ == "__main__":
    main()
