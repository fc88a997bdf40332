"""Training speed: wall seconds for one category adapter, with a breakdown, on the paper backbone's shapes.

The run is `anomclip fit` without the command line: `train_category` on a folder of `--shots` normal
images of a "bottle" category (its manual phrases give 48 image-head + 16 pixel-head = 64 prompts), both
heads, the paper preset's two-stage schedule over `--epochs`, no checkpoints or trackers, the adapter
written to a temporary folder. Random weights, float32.
Target: <= 150 s for 4 shots and 100 epochs on a 2-core CPU.

Breakdown, measured separately in the same process (medians of --repeats, interleaved):
- image encoding of the shots, once per run (the frozen vision tower, memory bank and training features);
- the text tower per epoch: forward + backward of all prompts of both heads, three ways: the full 77
  tokens, cut to the longest prompt, and the default (cut, and each shared prompt prefix run once);
- one whole training step (text tower, losses, SGD), so "the rest" of an epoch is the difference.

    python benchmarks/bench_training.py [--epochs 100] [--shots 4] [--repeats 3] [--json]
    python benchmarks/bench_training.py --epochs 4 --repeats 1           # a quick look
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from _common import MIB, PeakRSS, apply_threads, base_parser, interleaved_times, median, paper_model, report
from anomclip_hf.modeling_anomclip import HEADS
from anomclip_hf.processing_anomclip import AnomCLIPProcessor
from anomclip_hf.text_encoding import encode_text_embeddings, prefix_tree, truncate_to_longest
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
    eos = model.config.clip_config.text_config.eos_token_id
    ids = model.tokenize_prompts(prompts.normal + prompts.manual + prompts.learned)
    return (truncate_to_longest(ids, eos) if truncate else ids), eos


def text_tower_epoch(model, truncate: bool, share_prefixes: bool) -> None:
    """Forward + backward of every prompt of both heads to the prompt vectors: the text part of one epoch."""
    total = 0
    for head in HEADS:
        ids, eos = head_inputs(model, head, truncate)
        embeds = model._prompt_embeddings(CATEGORY, ids)
        features = encode_text_embeddings(model.clip.text_model, model.clip.text_projection, embeds, ids, eos,
                                          share_prefixes=share_prefixes)
        total = total + features.sum()
    total.backward()


def component_times(model, pixel_values: torch.Tensor, repeats: int) -> tuple[dict, dict]:
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
    times = interleaved_times(functions, repeats)
    shapes = {}
    for head in HEADS:
        full, eos = head_inputs(model, head, truncate=False)
        cut, _ = head_inputs(model, head, truncate=True)
        shapes[head] = {"prompts": int(full.shape[0]), "tokens_77": int(full.numel()),
                        "tokens_truncated": int(cut.numel()), "longest_prompt": int(cut.shape[1]),
                        "prefix_tree_nodes": prefix_tree(cut, eos).num_nodes}
    return times, shapes


def end_to_end(model, data_root: str, output_dir: str, shots: int, epochs: int) -> tuple[dict, float, PeakRSS]:
    config = TrainingConfig(stage1_epochs=epochs // 2, stage2_epochs=epochs - epochs // 2, cpu=True, trackers="none",
                            checkpoint_every=0, progress_bar=False)
    began = time.perf_counter()
    with PeakRSS() as memory:
        summary = train_category(model, CATEGORY, output_dir, dataset="folder", data_root=data_root, shots=shots,
                                 seed=0, config=config)
    return summary, time.perf_counter() - began, memory


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each component measurement")
    parser.add_argument("--skip-run", action="store_true", help="components only, no end-to-end training run")
    args = parser.parse_args()
    apply_threads(args)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (two stages)")

    model = paper_model()
    with tempfile.TemporaryDirectory() as scratch:
        data_root = os.path.join(scratch, "data")
        paths = write_shots(os.path.join(data_root, CATEGORY), args.shots)
        pixel_values = AnomCLIPProcessor.from_model(model)(images=[Image.open(p) for p in paths])["pixel_values"]
        # the run first, so its peak memory is not hidden in memory that the components freed
        run = None if args.skip_run else end_to_end(model, data_root, os.path.join(scratch, "job"), args.shots,
                                                      args.epochs)
        times, shapes = component_times(model, pixel_values, args.repeats)

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
    if run is not None:
        summary, wall, memory = run
        text_total = medians["text_tower_default"] * args.epochs
        encoding, loop = medians["image_encoding_once"], summary["train_wall_time_s"]
        breakdown = {"image_encoding_once_s": encoding, "text_tower_all_epochs_s": text_total,
                     "rest_s": wall - encoding - text_total,
                     "rest_in_training_loop_s": loop - text_total,
                     "rest_outside_training_loop_s": wall - loop - encoding}
        results["run"] = {"wall_s": wall, "train_wall_time_s": summary["train_wall_time_s"],
                          "job_wall_time_s": summary["job_wall_time_s"], "breakdown": breakdown,
                          "peak_extra_rss_mib": memory.extra_bytes / MIB, "peak_rss_mib": memory.peak_bytes / MIB,
                          "rss_method": memory.method}
        lines += [f"one adapter, {args.epochs} epochs: {wall:.1f} s wall = image encoding {encoding:.1f} s + text "
                  f"tower {text_total:.1f} s ({args.epochs} x {medians['text_tower_default']:.2f}) + rest "
                  f"{breakdown['rest_s']:.1f} s (losses, SGD and loop {breakdown['rest_in_training_loop_s']:.1f} s; "
                  f"outside the loop {breakdown['rest_outside_training_loop_s']:.1f} s: reading the shots, "
                  "thresholds, prototypes, saving)",
                  f"peak RSS during the run: {memory.peak_bytes / MIB:.0f} MiB ({memory.extra_bytes / MIB:.0f} MiB "
                  f"above the loaded model; {memory.method})"]
    report(args, results, lines)


if __name__ == "__main__":
    main()
