"""Inference speed: a full AnomCLIPModel forward against a bare CLIPVisionModel forward of the same weights.

Paper backbone shapes (ViT-B-16-plus-240), random weights. The full forward is what `anomclip predict`
runs per batch: the dual-stream vision tower (V-V in all 12 blocks, two memory taps), nearest neighbours
in a memory of 4 reference images, the cached text prototypes (no text tower), fusion, a 400x400 map and
its Gaussian blur. The baseline is transformers' `CLIPVisionModel` on the same vision weights. Both run
under torch.inference_mode, interleaved, and the figures are medians.
Target: full / bare time <= 1.20 (the V-V path adds about 12% of the FLOPs).

    python benchmarks/bench_inference.py [--batches 1 8] [--repeats 7] [--references 4] [--json]
    python benchmarks/bench_inference.py --device cuda --autocast bfloat16    # on a GPU
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionModel

from _common import (MIB, PeakRSS, apply_threads, base_parser, interleaved_times, median, paper_model, random_pixels,
                     report)

OUTPUT_SIZE = 400


def bare_vision_model(model) -> CLIPVisionModel:
    """transformers' CLIPVisionModel holding the model's own vision weights."""
    vision = CLIPVisionModel(model.config.clip_config.vision_config)
    # transformers 5 flattened CLIPVisionModel; 4.x nests the transformer under .vision_model
    getattr(vision, "vision_model", vision).load_state_dict(model.clip.vision_model.state_dict())
    return vision.eval()


def autocast_context(device: str, dtype_name: str):
    dtype = None if dtype_name == "none" else getattr(torch, dtype_name)
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--references", type=int, default=4, help="reference images in the memory bank")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", default="none", choices=["none", "bfloat16", "float16"],
                        help="autocast dtype for both models (GPU); the scores stay float32")
    args = parser.parse_args()
    apply_threads(args)

    model = paper_model().to(args.device)
    model.add_category("bottle", reference_images=random_pixels(args.references, seed=1))
    bare = bare_vision_model(model).to(args.device)
    with torch.inference_mode():
        model.text_prototypes("bottle")  # cached, as after loading an adapter: no text tower below

    def full_forward(pixel_values):
        with torch.inference_mode(), autocast_context(args.device, args.autocast):
            return model(pixel_values, output_size=OUTPUT_SIZE)

    def bare_forward(pixel_values):
        with torch.inference_mode(), autocast_context(args.device, args.autocast):
            return bare(pixel_values=pixel_values)

    def vision_only(pixel_values):
        with torch.inference_mode(), autocast_context(args.device, args.autocast):
            return model.encode_images(pixel_values)

    results = {"settings": {"device": args.device, "autocast": args.autocast, "references": args.references,
                            "output_size": OUTPUT_SIZE, "repeats": args.repeats,
                            "bare_attention": bare.config._attn_implementation}, "batches": {}}
    lines = [f"full AnomCLIPModel forward ({args.references} references, {OUTPUT_SIZE}x{OUTPUT_SIZE} blurred maps, "
             f"cached prototypes) vs bare CLIPVisionModel ({bare.config._attn_implementation} attention); "
             f"device {args.device}, autocast {args.autocast}, median of {args.repeats}"]
    for batch in args.batches:
        pixel_values = random_pixels(batch, seed=2).to(args.device)
        times = interleaved_times({"bare": lambda: bare_forward(pixel_values),
                                   "vision": lambda: vision_only(pixel_values),
                                   "full": lambda: full_forward(pixel_values)}, args.repeats, args.device)
        bare_s, vision_s, full_s = (median(times[name]) for name in ("bare", "vision", "full"))
        entry = {"bare_s": bare_s, "dual_stream_vision_s": vision_s, "full_s": full_s,
                 "bare_images_per_s": batch / bare_s, "full_images_per_s": batch / full_s,
                 "ratio_full_to_bare": full_s / bare_s, "ratio_vision_to_bare": vision_s / bare_s,
                 "times": times}
        lines.append(f"batch {batch}: bare {batch / bare_s:6.2f} img/s ({bare_s * 1e3:7.1f} ms) | full "
                     f"{batch / full_s:6.2f} img/s ({full_s * 1e3:7.1f} ms) | ratio {full_s / bare_s:.3f} "
                     f"(dual-stream vision alone {vision_s / bare_s:.3f}, scoring {(full_s - vision_s) * 1e3:.1f} ms)")
        if batch == max(args.batches) and args.device == "cpu":
            with PeakRSS() as bare_memory:
                bare_forward(pixel_values)
            with PeakRSS() as full_memory:
                full_forward(pixel_values)
            entry.update(bare_peak_extra_rss_mib=bare_memory.extra_bytes / MIB,
                         full_peak_extra_rss_mib=full_memory.extra_bytes / MIB,
                         full_peak_rss_mib=full_memory.peak_bytes / MIB, rss_method=full_memory.method)
            lines.append(f"batch {batch} peak RSS above the loaded model: full {full_memory.extra_bytes / MIB:.0f} "
                         f"MiB, bare {bare_memory.extra_bytes / MIB:.0f} MiB (process peak "
                         f"{full_memory.peak_bytes / MIB:.0f}"
                         f" MiB; {full_memory.method})")
        results["batches"][str(batch)] = entry
    report(args, results, lines)


if __name__ == "__main__":
    main()
