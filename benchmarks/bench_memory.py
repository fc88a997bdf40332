"""The visual memory for many references (issue 23): fit time, adapter size, peak RSS, predict latency and score
drift of the default memory (exact up to 16384 rows per layer, a greedy coreset above) against the exact full
bank, for k references.

Paper backbone shapes (ViT-B-16-plus-240, random weights; `--quick`: a small random CLIP), generated images
(`anomclip_hf.data.synthetic_images`: normal parts; test images with drawn-in scratches, blobs and missing
patches), written as PNG files and fitted from the files, as `anomclip fit` does: streamed through the vision
tower in batches, memory built, leave-one-out thresholds. Printed per k:
- fit: wall time split into the vision forwards, the coreset (projection, greedy selection, exact radius) and
  the thresholds; peak RSS of the fit above the loaded model (kernel high-water mark);
- adapter: memory_bank.safetensors size, and as a fraction of the exact full bank's;
- predict: a full forward (batch 1, 400x400 blurred map, cached prototypes) / a bare CLIPVisionModel forward of
  the same weights, interleaved, medians; the same for the exact full bank;
- drift: max |image score (default memory) - image score (exact full bank)| on the test images, and both
  image AUROCs (normal vs defective test images).
Targets (2-core CPU, float32): k = 64 exact <= 1.15x bare; k = 1000 coreset <= 1.15x bare, adapter <= 10 % of the
full bank, AUROC within 0.5 points of the full bank, fit time dominated by the forwards.

    python benchmarks/bench_memory.py --quick                  # small model, k = 4 64 256
    python benchmarks/bench_memory.py --references 4 64        # paper shape
    python benchmarks/bench_memory.py --references 1000 --repeats 3
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from _common import (
    MIB,
    PeakRSS,
    apply_threads,
    base_parser,
    interleaved_times,
    median,
    paper_model,
    report,
)
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.data.synthetic_images import DEFECT_TYPES, render_normal, render_sample
from anomclip_hf.memory.policy import memory_rows
from anomclip_hf.metrics import image_auroc
from anomclip_hf.model.memory_bank import build_memory, encode_references
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

OUTPUT_SIZE = 400
PART = "widget"


def quick_model() -> AnomCLIPModel:
    """A small random CLIP: width 128, 4 layers, 112 px / patch 8 (196 patches)."""
    torch.manual_seed(0)
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=112,
                  patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)).eval()
    return AnomCLIPModel.from_clip(clip, tokenizer=tokenizer, memory_layers=[1, 2])


def bare_vision_model(model) -> CLIPVisionModel:
    vision = CLIPVisionModel(model.config.clip_config.vision_config)
    getattr(vision, "vision_model", vision).load_state_dict(model.clip.vision_model.state_dict())
    return vision.eval()


def write_references(folder: str, count: int, size: int) -> list[str]:
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"ref_{index:05d}.png")
        Image.fromarray(render_normal(PART, f"train{index}", size=size)).save(path)
        paths.append(path)
    return paths


def test_images(size: int, count: int) -> tuple[list, list[int]]:
    images, labels = [], []
    for index in range(count):
        images.append(Image.fromarray(render_normal(PART, f"test{index}", size=size)))
        defect = DEFECT_TYPES[index % len(DEFECT_TYPES)]
        images.append(Image.fromarray(render_sample(PART, f"bad{index}", size=size, defects=(defect,)).image))
        labels += [0, 1]
    return images, labels


def fit(model, name: str, paths: list[str], memory_size=None) -> dict:
    """What `anomclip fit --epochs 0` does to the memory, timed by part, with the peak RSS."""
    patches = (model.config.image_size // model.config.clip_config.vision_config.patch_size) ** 2
    size = memory_rows(len(paths) * patches, memory_size)
    with PeakRSS() as peak:
        began = time.perf_counter()
        vision = encode_references(model, paths, spill=size is not None)
        encoded = time.perf_counter()
        bank = build_memory(vision, size, seed=0)
        built = time.perf_counter()
        model.add_category(name, reference_images=bank)
        if len(paths) >= 2:
            model.estimate_thresholds(vision, name)
        done = time.perf_counter()
    return {"vision": vision, "bank": bank, "size": size, "encode_s": encoded - began, "memory_s": built - encoded,
            "thresholds_s": done - built, "fit_s": done - began, "peak_extra_mib": peak.extra_bytes / MIB,
            "rss_method": peak.method}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--references", type=int, nargs="+", default=None, help="k values (default 4 64 256 1000)")
    parser.add_argument("--quick", action="store_true", help="a small random CLIP instead of the paper shape")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tests", type=int, default=10, help="normal and defective test images, each")
    args = parser.parse_args()
    apply_threads(args)
    ks = args.references or ([4, 64, 256] if args.quick else [4, 64, 256, 1000])
    model = quick_model() if args.quick else paper_model()
    size = model.config.image_size
    bare = bare_vision_model(model)
    images, labels = test_images(size, args.tests)
    from anomclip_hf.model.processing_anomclip import model_pixel_values

    test_pixels = model_pixel_values(model.config, images)
    one = test_pixels[:1]
    results, lines = {"settings": {"quick": args.quick, "references": ks, "repeats": args.repeats}, "k": {}}, []
    lines.append(f"{'quick' if args.quick else 'paper-shaped'} model, image {size}, {len(images)} test images; "
                 f"full forward batch 1, {OUTPUT_SIZE}x{OUTPUT_SIZE} maps; medians of {args.repeats}, interleaved")
    with tempfile.TemporaryDirectory() as folder:
        for k in ks:
            paths = write_references(folder, k, size)[:k]
            entry = run_k(model, bare, k, paths, test_pixels, labels, one, args.repeats, folder)
            results["k"][str(k)] = entry
            lines.append(describe(k, entry))
            for name in list(model.categories):
                model.remove_category(name)
    report(args, results, lines)


def run_k(model, bare, k, paths, test_pixels, labels, one, repeats, folder) -> dict:
    default = fit(model, f"k{k}", paths)
    entry = {key: value for key, value in default.items() if key not in ("vision", "bank")}
    adapter = model.save_category(os.path.join(folder, f"adapter_k{k}"), f"k{k}")
    entry["adapter_memory_mib"] = os.path.getsize(os.path.join(adapter, "memory_bank.safetensors")) / MIB
    if default["size"] is not None:  # the exact full bank beside it, for the drift and the ratio
        model.add_category(f"k{k}_full", reference_images=build_memory(default["vision"], None))
        full_name = f"k{k}_full"
    else:
        full_name = f"k{k}"
    full_bytes = sum(layer.numel() * 4 for layer in model.get_category(full_name).memory_bank)
    entry["full_bank_mib"] = full_bytes / MIB
    entry["adapter_fraction_of_full"] = entry["adapter_memory_mib"] / entry["full_bank_mib"]
    with torch.inference_mode():
        model.text_prototypes(f"k{k}"), model.text_prototypes(full_name)
        scores = model(test_pixels, category=f"k{k}", output_size=OUTPUT_SIZE).image_scores
        full_scores = model(test_pixels, category=full_name, output_size=OUTPUT_SIZE).image_scores
    entry["max_abs_score_diff"] = float((scores - full_scores).abs().max())
    entry["auroc"] = 100 * float(image_auroc(scores.numpy(), labels))
    entry["auroc_full"] = 100 * float(image_auroc(full_scores.numpy(), labels))

    def forward(name):
        with torch.inference_mode():
            return model(one, category=name, output_size=OUTPUT_SIZE)

    def bare_forward():
        with torch.inference_mode():
            return bare(pixel_values=one)

    functions = {"bare": bare_forward, "default": lambda: forward(f"k{k}")}
    if full_name != f"k{k}":
        functions["full"] = lambda: forward(full_name)
    medians = {name: median(times) for name, times in interleaved_times(functions, repeats).items()}
    entry["bare_ms"] = 1e3 * medians["bare"]
    entry["ratio_default"] = medians["default"] / medians["bare"]
    entry["ratio_full"] = medians.get("full", medians["default"]) / medians["bare"]
    return entry


def describe(k: int, e: dict) -> str:
    memory = "exact" if e["size"] is None else f"coreset {e['size']} rows"
    return (f"k = {k:4d} ({memory}): fit {e['fit_s']:.1f} s (forwards {e['encode_s']:.1f}, memory {e['memory_s']:.1f}, "
            f"thresholds {e['thresholds_s']:.1f}), +{e['peak_extra_mib']:.0f} MiB peak RSS; adapter memory "
            f"{e['adapter_memory_mib']:.1f} MiB = {100 * e['adapter_fraction_of_full']:.1f} % of the full bank; "
            f"predict {e['ratio_default']:.3f}x bare ({e['bare_ms']:.0f} ms; full bank {e['ratio_full']:.3f}x); "
            f"max |score diff| vs full {e['max_abs_score_diff']:.2e}; AUROC {e['auroc']:.1f} (full {e['auroc_full']:.1f})")


if __name__ == "__main__":
    main()
