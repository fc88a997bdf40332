"""Training speed: wall seconds for one category adapter, with a breakdown, on the paper backbone's shapes.

The run is `anomclip fit` without the command line: `train_category` on a folder of `--shots` normal
images of a "bottle" category (its manual phrases give 48 image-head + 16 pixel-head = 64 prompts), both
heads, the paper preset's two-stage schedule over `--epochs`, no checkpoints or trackers, the adapter
written to a temporary folder. Random weights; the run is made in float32 and again with the text tower in
bfloat16 (`--low`, autocast; prompt vectors, optimizer and losses stay float32), so the two sit side by side.
Targets: <= 150 s for 4 shots and 100 epochs on a 2-core CPU (float32); bf16 <= 0.70x float32 where the CPU
runs bf16 natively.

Breakdown, measured separately in the same process (medians of --repeats, interleaved):
- image encoding of the shots, once per run (the frozen vision tower, memory bank and training features);
- the text tower per epoch: forward + backward of all prompts of both heads, three ways: the full 77
  tokens, cut to the longest prompt, and the default (cut, and each shared prompt prefix run once);
- one whole training step (text tower, losses, SGD), so "the rest" of an epoch is the difference; and the
  same step with the text tower in `--low` precision (interleaved with the float32 one: their ratio).
The run's own breakdown is timed inside it (wrappers around the vision tower, the text tower and backward),
so its parts add up to its wall time.

    python benchmarks/bench_training.py [--epochs 100] [--shots 4] [--repeats 3] [--json]
    python benchmarks/bench_training.py --epochs 4 --repeats 1           # a quick look
    python benchmarks/bench_training.py --low none                       # float32 only
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Iterator

import numpy as np
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

from anomclip_hf.model.category import HEADS
from anomclip_hf.model.precision import resolve_precision
from anomclip_hf.model.processing_anomclip import AnomCLIPProcessor
from anomclip_hf.model.prompt_text import prompt_embeddings
from anomclip_hf.model.text_encoding import (
    encode_text_embeddings,
    prefix_tree,
    truncate_to_longest,
)
from anomclip_hf.training import TrainingConfig
from anomclip_hf.training.job import train_category
from anomclip_hf.training.step import ShotFeatures, build_optimizer, training_step

CATEGORY = "bottle"


def write_shots(folder: str, shots: int, size: int = 240) -> list[str]:
    """`shots` noise images as PNG files (the weights are random, so content does not matter)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(shots):
        path = os.path.join(folder, f"{index:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def head_inputs(model, head: str, truncate: bool):
    """(input ids, eos id) of every prompt of a head, as encode_prompts builds them."""
    prompts = model.head_prompts(CATEGORY, head)
    eos = model.text_eos_token_id
    ids = model.tokenize_prompts(prompts.normal + prompts.manual + prompts.learned)
    return (truncate_to_longest(ids, eos) if truncate else ids), eos


def text_tower_epoch(model, truncate: bool, share_prefixes: bool) -> None:
    """Forward + backward of every prompt of both heads to the prompt vectors: the text part of one epoch."""
    total = 0
    for head in HEADS:
        ids, eos = head_inputs(model, head, truncate)
        embeds = prompt_embeddings(model, model.prompt_parameters(CATEGORY)[0], ids)
        features = encode_text_embeddings(model.clip.text_model, model.clip.text_projection, embeds, ids, eos,
                                          share_prefixes=share_prefixes)
        total = total + features.sum()
    total.backward()


def component_times(model, pixel_values: torch.Tensor, repeats: int, low: str) -> tuple[dict, dict]:
    with torch.no_grad():
        vision = model.encode_images(pixel_values)
    model.add_category(CATEGORY, reference_images=vision, learned_prompts=True)
    features = ShotFeatures.from_vision(vision)
    config = TrainingConfig()
    optimizer = build_optimizer(model.prompt_parameters(CATEGORY), config)

    def encode_once():
        with torch.no_grad():
            model.encode_images(pixel_values)

    functions = {
        "image_encoding_once": encode_once,
        "text_tower_77_tokens": lambda: text_tower_epoch(model, truncate=False, share_prefixes=False),
        "text_tower_truncated": lambda: text_tower_epoch(model, truncate=True, share_prefixes=False),
        "text_tower_default": lambda: text_tower_epoch(model, truncate=True, share_prefixes=True),
        "training_step": lambda: training_step(model, CATEGORY, features, optimizer, config, use_margin=True),
    }
    if low != "none":
        choice = resolve_precision(low, "cpu")
        functions[f"training_step_{low}"] = lambda: training_step(model, CATEGORY, features, optimizer, config,
                                                                  use_margin=True, precision=choice)
    times = interleaved_times(functions, repeats)
    shapes = {}
    for head in HEADS:
        full, eos = head_inputs(model, head, truncate=False)
        cut, _ = head_inputs(model, head, truncate=True)
        shapes[head] = {"prompts": int(full.shape[0]), "tokens_77": int(full.numel()),
                        "tokens_truncated": int(cut.numel()), "longest_prompt": int(cut.shape[1]),
                        "prefix_tree_nodes": prefix_tree(cut, eos).num_nodes}
    return times, shapes


@contextlib.contextmanager
def timed_calls(model) -> Iterator[dict]:
    """Wall seconds of every call, inside the run, of: the vision tower (`encode_images`), the text tower with
    gradients (training) or without (the adapter's prototypes), and backward passes. Benchmark instrumentation
    only: the wrappers are removed on exit."""
    calls: dict[str, list[float]] = {"image_encoding": [], "text_training": [], "text_prototypes": [], "backward": []}

    def timed(function, bucket):
        def wrapper(*args, **kwargs):
            name = bucket() if callable(bucket) else bucket
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                calls[name].append(time.perf_counter() - began)
        return wrapper

    backward = torch.Tensor.backward
    model.encode_images = timed(model.encode_images, "image_encoding")
    model.encode_prompts = timed(model.encode_prompts,
                                 lambda: "text_training" if torch.is_grad_enabled() else "text_prototypes")
    torch.Tensor.backward = timed(backward, "backward")
    try:
        yield calls
    finally:
        del model.encode_images, model.encode_prompts  # the instance attributes hid the methods
        torch.Tensor.backward = backward


def end_to_end(model, data_root: str, output_dir: str, shots: int, epochs: int, precision: str = "fp32"):
    """train_category on the shot folder: (summary, wall seconds, PeakRSS, timed calls)."""
    config = TrainingConfig(stage1_epochs=epochs // 2, stage2_epochs=epochs - epochs // 2, cpu=True, trackers="none",
                            checkpoint_every=0, progress_bar=False, precision=precision)
    with timed_calls(model) as calls, PeakRSS() as memory:
        began = time.perf_counter()
        summary = train_category(model, CATEGORY, output_dir, dataset="folder", data_root=data_root, shots=shots,
                                 seed=0, config=config)
        wall = time.perf_counter() - began
    return summary, wall, memory, calls


def run_breakdown(wall: float, calls: dict, epochs: int) -> dict:
    """Where the run's wall time went, from the calls timed inside it (they add up to the wall time)."""
    encodings = calls["image_encoding"]
    text = sum(calls["text_training"]) + sum(calls["backward"])  # the losses' share of backward is negligible
    parts = {"image_encoding_of_the_shots_s": encodings[0] if encodings else 0.0,
             "text_tower_training_s": text,
             "image_encodings_after_training_s": sum(encodings[1:]),  # leave-one-out thresholds score each shot
             "text_prototypes_s": sum(calls["text_prototypes"])}
    parts["rest_s"] = wall - sum(parts.values())
    return {**parts, "text_tower_per_epoch_s": text / epochs, "image_encoding_calls": len(encodings)}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each component measurement")
    parser.add_argument("--skip-run", action="store_true", help="components only, no end-to-end training run")
    parser.add_argument("--low", default="bf16", choices=["bf16", "fp16", "none"],
                        help="the text-tower precision compared with float32 (none: float32 only)")
    args = parser.parse_args()
    apply_threads(args)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (two stages)")

    model = paper_model()
    with tempfile.TemporaryDirectory() as scratch:
        data_root = os.path.join(scratch, "data")
        paths = write_shots(os.path.join(data_root, CATEGORY), args.shots)
        pixel_values = AnomCLIPProcessor.from_model(model)(images=[Image.open(p) for p in paths])["pixel_values"]
        # the runs first, so their peak memory is not hidden in memory that the components freed
        runs, prototypes = {}, {}
        for precision in ([] if args.skip_run else ["fp32"] + ([args.low] if args.low != "none" else [])):
            runs[precision] = end_to_end(model, data_root, os.path.join(scratch, f"job_{precision}"), args.shots,
                                         args.epochs, precision)
            prototypes[precision] = {h: p.clone() for h, p in model.text_prototypes(CATEGORY).items()}
        run = runs.get("fp32")
        times, shapes = component_times(model, pixel_values, args.repeats, args.low)

    medians = {name: median(values) for name, values in times.items()}
    prompts = sum(shape["prompts"] for shape in shapes.values())
    results = {"settings": {"shots": args.shots, "epochs": args.epochs, "repeats": args.repeats, "prompts": prompts,
                            "heads": shapes},
               "components_s": medians, "component_times": times,
               "rest_per_epoch_s": medians["training_step"] - medians["text_tower_default"]}
    lines = [f"{args.shots} shots, {prompts} prompts ("
             + ", ".join(f"{head}: {s['prompts']} prompts, longest {s['longest_prompt']} tokens, "
                         f"{s['tokens_truncated']} padded token rows -> {s['prefix_tree_nodes']} prefix-tree nodes"
                         for head, s in shapes.items()) + f"); median of {args.repeats}",
             f"image encoding of the shots (once)        {medians['image_encoding_once']:6.2f} s",
             f"text tower per epoch, 77 tokens           {medians['text_tower_77_tokens']:6.2f} s",
             f"text tower per epoch, cut to longest      {medians['text_tower_truncated']:6.2f} s",
             f"text tower per epoch, cut + shared prefix {medians['text_tower_default']:6.2f} s   (default)",
             f"whole training step per epoch             {medians['training_step']:6.2f} s   "
             f"(rest: {results['rest_per_epoch_s']:.2f} s)"]
    if args.low != "none":
        low_step = medians[f"training_step_{args.low}"]
        results["low_step_to_fp32"] = low_step / medians["training_step"]
        lines.append(f"training step with the text tower in {args.low:4s}  {low_step:6.2f} s   "
                     f"= {results['low_step_to_fp32']:.3f}x float32 ({resolve_precision(args.low, 'cpu').describe()})")
    if run is not None:
        summary, wall, memory, calls = run
        breakdown = run_breakdown(wall, calls, args.epochs)
        results["run"] = {"wall_s": wall, "train_wall_time_s": summary["train_wall_time_s"],
                          "job_wall_time_s": summary["job_wall_time_s"], "breakdown": breakdown,
                          "peak_extra_rss_mib": memory.extra_bytes / MIB, "peak_rss_mib": memory.peak_bytes / MIB,
                          "rss_method": memory.method}
        shots_label = f"image encoding of the {args.shots} shots (once)"
        lines += [f"one adapter, {args.epochs} epochs: {wall:.1f} s wall, timed inside the run:",
                  f"  {shots_label:38s} {breakdown['image_encoding_of_the_shots_s']:6.1f} s",
                  f"  {'text tower, forward + backward':38s} {breakdown['text_tower_training_s']:6.1f} s "
                  f"({args.epochs} x {breakdown['text_tower_per_epoch_s']:.2f} s)",
                  f"  {'image encodings after training':38s} {breakdown['image_encodings_after_training_s']:6.1f} s "
                  f"({breakdown['image_encoding_calls'] - 1} calls: leave-one-out thresholds)",
                  f"  {'text prototypes for the adapter':38s} {breakdown['text_prototypes_s']:6.1f} s",
                  f"  {'rest':38s} {breakdown['rest_s']:6.1f} s (losses, SGD, loop, reading the shots, saving)",
                  f"peak RSS during the run: {memory.peak_bytes / MIB:.0f} MiB ({memory.extra_bytes / MIB:.0f} MiB "
                  f"above the loaded model; {memory.method})"]
    if run is not None and args.low in runs:
        low_summary, low_wall, _, low_calls = runs[args.low]
        final = {p: runs[p][0]["final_losses"] for p in runs}
        last_stage = list(final["fp32"])[-1]
        loss_drift = abs(final[args.low][last_stage]["loss"] - final["fp32"][last_stage]["loss"])
        prototype_drift = max(float((prototypes[args.low][h] - prototypes["fp32"][h]).abs().max()) for h in HEADS)
        results["low_run"] = {"precision": args.low, "wall_s": low_wall, "ratio_to_fp32": low_wall / wall,
                              "text_tower_per_epoch_s": run_breakdown(low_wall, low_calls, args.epochs)[
                                  "text_tower_per_epoch_s"],
                              "final_loss_drift": loss_drift, "prototype_drift": prototype_drift}
        lines.append(f"the same adapter with the text tower in {args.low}: {low_wall:.1f} s wall = "
                     f"{low_wall / wall:.3f}x float32 (run after it, not interleaved); final loss "
                     f"{final[args.low][last_stage]['loss']:.5f} vs {final['fp32'][last_stage]['loss']:.5f} "
                     f"(drift {loss_drift:.1e}), trained prototypes differ by at most {prototype_drift:.1e}")
    report(args, results, lines)


if __name__ == "__main__":
    main()
