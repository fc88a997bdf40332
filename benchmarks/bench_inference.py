"""Inference speed: a full AnomCLIPModel forward against a bare CLIPVisionModel forward of the same weights,
in float32 and in bfloat16 (autocast towers) side by side, with memories of 4, 16 and 64 reference images.

Paper backbone shapes (ViT-B-16-plus-240), random weights. The full forward is what `anomclip predict`
runs per batch: the dual-stream vision tower (V-V in all 12 blocks, two memory taps), nearest neighbours
in a memory of k reference images, the cached text prototypes (no text tower), fusion, a 400x400 map and
its Gaussian blur. The baseline is transformers' `CLIPVisionModel` on the same vision weights. Everything
runs under torch.inference_mode, interleaved (A B C A B C ...), and the figures are medians.
Printed per batch size:
- full / bare (float32) at every k: target <= 1.20 at k = 4, <= 1.15 at k = 64;
- bf16 / fp32 of the full forward (k = 4) and of the bare one: target <= 0.65 where bf16 is native;
- the largest difference of image scores and of map pixels between bf16 and fp32 (drift; random weights);
- the memory search alone at every k: exact float32, and the bf16 shortlist with its float32 re-check.

    python benchmarks/bench_inference.py [--batches 1 8] [--repeats 5] [--references 4 16 64] [--json]
    python benchmarks/bench_inference.py --device cuda          # on a GPU
"""

from __future__ import annotations

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
from transformers import CLIPVisionModel

from anomclip_hf.model.precision import resolve_precision, tower_autocast
from anomclip_hf.model.scoring import memory_patch_scores
from anomclip_hf.model.vv_attention import VisionFeatures

OUTPUT_SIZE = 400


def bare_vision_model(model) -> CLIPVisionModel:
    """transformers' CLIPVisionModel holding the model's own vision weights."""
    vision = CLIPVisionModel(model.config.clip_config.vision_config)
    # transformers 5 flattened CLIPVisionModel; 4.x nests the transformer under .vision_model
    getattr(vision, "vision_model", vision).load_state_dict(model.clip.vision_model.state_dict())
    return vision.eval()


def reference_features(model, count: int, device: str, chunk: int = 8) -> VisionFeatures:
    """encode_images of `count` random reference images, in chunks (one encoding serves every k)."""
    parts = []
    with torch.inference_mode():
        for start in range(0, count, chunk):
            parts.append(model.encode_images(random_pixels(min(chunk, count - start), seed=100 + start).to(device)))
    return VisionFeatures(torch.cat([p.global_embeds for p in parts]), torch.cat([p.patch_embeds for p in parts]),
                          [torch.cat(layers) for layers in zip(*(p.memory_features for p in parts))])


def first(features: VisionFeatures, count: int) -> VisionFeatures:
    return VisionFeatures(features.global_embeds[:count], features.patch_embeds[:count],
                          [layer[:count] for layer in features.memory_features])


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--references", type=int, nargs="+", default=[4, 16, 64],
                        help="memory sizes k (reference images); the first one is used for the bf16 comparison")
    parser.add_argument("--low", default="bf16", choices=["bf16", "fp16", "none"],
                        help="the low precision compared with float32 (none: float32 only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dino", nargs="*", default=[], choices=["small", "base"],
                        help="also time the fused DINOv2 memory (random dinov2-small/-base shapes) against CLIP-only")
    parser.add_argument("--dino-only", action="store_true", help="only the --dino comparison")
    args = parser.parse_args()
    apply_threads(args)

    model = paper_model().to(args.device)
    if args.dino:
        from _dino_latency import dino_latency

        medians, dino_lines = dino_latency(model, args.dino, min(args.batches), args.references[0], args.repeats,
                                           args.device)
        if args.dino_only:
            report(args, {"dino_memory_s": medians}, dino_lines)
            return
    references = reference_features(model, max(args.references), args.device)
    for k in args.references:
        model.add_category(f"k{k}", reference_images=first(references, k))
        with torch.inference_mode():
            model.text_prototypes(f"k{k}")  # cached, as after loading an adapter: no text tower below
    bare = bare_vision_model(model).to(args.device)
    k0 = args.references[0]
    precisions = {"fp32": resolve_precision("fp32", args.device)}
    if args.low != "none":
        precisions[args.low] = resolve_precision(args.low, args.device)

    def full_forward(pixel_values, k, precision):
        with torch.inference_mode(), tower_autocast(precisions[precision], args.device):
            return model(pixel_values, category=f"k{k}", output_size=OUTPUT_SIZE)

    def bare_forward(pixel_values, precision):
        with torch.inference_mode(), tower_autocast(precisions[precision], args.device):
            return bare(pixel_values=pixel_values)

    def vision_only(pixel_values):
        with torch.inference_mode():
            return model.encode_images(pixel_values)

    results = {"settings": {"device": args.device, "references": args.references, "output_size": OUTPUT_SIZE,
                            "repeats": args.repeats, "bare_attention": bare.config._attn_implementation,
                            "precisions": {name: choice.describe() for name, choice in precisions.items()}},
               "batches": {}}
    lines = [f"full AnomCLIPModel forward (k = {args.references} references, {OUTPUT_SIZE}x{OUTPUT_SIZE} blurred "
             f"maps, cached prototypes) vs bare CLIPVisionModel ({bare.config._attn_implementation} attention); "
             f"device {args.device}, median of {args.repeats}, interleaved"]
    lines += [f"  {choice.describe()}" for choice in precisions.values()]
    for batch in args.batches:
        pixel_values = random_pixels(batch, seed=2).to(args.device)
        functions = {"bare fp32": lambda: bare_forward(pixel_values, "fp32"),
                     "vision fp32": lambda: vision_only(pixel_values)}
        for k in args.references:
            functions[f"full fp32 k={k}"] = lambda k=k: full_forward(pixel_values, k, "fp32")
        if args.low != "none":
            functions[f"bare {args.low}"] = lambda: bare_forward(pixel_values, args.low)
            functions[f"full {args.low} k={k0}"] = lambda: full_forward(pixel_values, k0, args.low)
        times = interleaved_times(functions, args.repeats, args.device)
        medians = {name: median(values) for name, values in times.items()}
        bare_s, vision_s = medians["bare fp32"], medians["vision fp32"]
        entry = {"medians_s": medians, "times": times, "ratio_vision_to_bare": vision_s / bare_s,
                 "ratio_full_to_bare": {str(k): medians[f"full fp32 k={k}"] / bare_s for k in args.references}}
        lines.append(f"batch {batch}: bare {batch / bare_s:6.2f} img/s ({bare_s * 1e3:7.1f} ms); dual-stream vision "
                     f"alone {vision_s / bare_s:.3f}x bare")
        for k in args.references:
            full_s = medians[f"full fp32 k={k}"]
            lines.append(f"  full fp32, k = {k:3d}: {batch / full_s:6.2f} img/s ({full_s * 1e3:7.1f} ms), "
                         f"{full_s / bare_s:.3f}x bare (scoring {(full_s - vision_s) * 1e3:.1f} ms)")
        if args.low != "none":
            low_full, low_bare = medians[f"full {args.low} k={k0}"], medians[f"bare {args.low}"]
            with torch.inference_mode():
                plain = full_forward(pixel_values, k0, "fp32")
                low = full_forward(pixel_values, k0, args.low)
            drift = {"image_scores": float((low.image_scores - plain.image_scores).abs().max()),
                     "anomaly_maps": float((low.anomaly_maps - plain.anomaly_maps).abs().max())}
            entry.update(low_to_fp32_full=low_full / medians[f"full fp32 k={k0}"], low_to_fp32_bare=low_bare / bare_s,
                         drift=drift)
            lines.append(f"  {args.low} vs fp32 (k = {k0}): full {low_full * 1e3:7.1f} ms = "
                         f"{entry['low_to_fp32_full']:.3f}x fp32, bare {entry['low_to_fp32_bare']:.3f}x fp32; "
                         f"max drift: image score {drift['image_scores']:.2e}, map pixel {drift['anomaly_maps']:.2e}")
        if batch == max(args.batches) and args.device == "cpu":
            with PeakRSS() as bare_memory:
                bare_forward(pixel_values, "fp32")
            with PeakRSS() as full_memory:
                full_forward(pixel_values, k0, "fp32")
            entry.update(bare_peak_extra_rss_mib=bare_memory.extra_bytes / MIB,
                         full_peak_extra_rss_mib=full_memory.extra_bytes / MIB,
                         full_peak_rss_mib=full_memory.peak_bytes / MIB, rss_method=full_memory.method)
            lines.append(f"  peak RSS above the loaded model (k = {k0}): full {full_memory.extra_bytes / MIB:.0f} MiB, "
                         f"bare {bare_memory.extra_bytes / MIB:.0f} MiB (process peak "
                         f"{full_memory.peak_bytes / MIB:.0f} MiB; {full_memory.method})")
        results["batches"][str(batch)] = entry

    # The memory search alone: exact float32 products, and the bf16 shortlist + float32 re-check.
    with torch.inference_mode():
        queries = model.encode_images(random_pixels(1, seed=3).to(args.device)).memory_features
    search = {}
    for k in args.references:
        bank = model.get_category(f"k{k}").memory_bank
        memory_patch_scores(queries, bank, search="shortlist")  # builds the bank's bf16 copy, once
        times = interleaved_times({mode: lambda mode=mode: memory_patch_scores(queries, bank, search=mode)
                                   for mode in ("exact", "shortlist")}, args.repeats, args.device)
        exact = memory_patch_scores(queries, bank, search="exact")
        difference = float((memory_patch_scores(queries, bank, search="shortlist") - exact).abs().max())
        search[str(k)] = {mode: median(values) for mode, values in times.items()}
        search[str(k)]["max_difference"] = difference
    results["memory_search_s"] = search
    lines.append("memory search of one image (225 patches, 2 layers): "
                 + "; ".join(f"k = {k}: exact {v['exact'] * 1e3:.1f} ms, bf16 shortlist {v['shortlist'] * 1e3:.1f} ms "
                             f"(max difference {v['max_difference']:.1e})" for k, v in search.items()))
    if args.dino:
        results["dino_memory_s"] = medians
        lines += dino_lines
    report(args, results, lines)


if __name__ == "__main__":
    main()
