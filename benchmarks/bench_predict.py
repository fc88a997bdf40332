"""`anomclip predict` end to end against the model's own scoring of the same images.

A folder of generated PNGs (640 x 480, so decoding and overlays cost what they cost on camera images) is
scored by the command a user types, in a fresh process, with `--overlays none`, `--overlays anomalous` and
`--overlays all`; the threshold is set at the 80th percentile of the in-process scores, so 20 % of the set is
decided anomalous (the weights are random: what "anomalous" means does not change the cost of drawing it).
The baseline is the model's own forward (`model(**model_inputs(config, images))`, batches of the same size, in
this process) on the same images decoded beforehand: the figure the command should approach.

From the command's progress bar (read as it is printed): the start-up (process start to the bar: imports and
loading), the time to the first scored batch, and the scoring phase (first to last batch, which excludes the
first batch's warm-up); plus the whole wall time. Runs alternate (none, anomalous, all, none, ...) so a busy
machine slows each alike; medians over the repeats. Scores of every run are checked equal (scores.csv).

    python benchmarks/bench_predict.py [--images 100] [--model small|tiny] [--repeats 2] [--json]
"""

from __future__ import annotations

import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import base_parser, report
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.io.image_io import load_image
from anomclip_hf.model.processing_anomclip import model_inputs
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

REPO = Path(__file__).resolve().parents[1]
# "small": a ViT of 6 blocks, 384 wide, 160 px in 16 px patches; "tiny": the test suite's model
MODELS = {"small": (dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                         image_size=160, patch_size=16), dict(hidden_size=256, intermediate_size=1024,
                                                              num_hidden_layers=4, num_attention_heads=4)),
          "tiny": (dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                        image_size=30, patch_size=2), dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                                           num_attention_heads=4))}
BAR = re.compile(r"scoring:\s+\d+%\|.*?\|\s*(\d+)/(\d+)")


def write_workspace(root: Path, kind: str, count: int, size=(640, 480)) -> dict:
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    vision, text = MODELS[kind]
    config = CLIPConfig(projection_dim=128, vision_config={**vision, "hidden_act": "gelu"},
                        text_config={**text, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                     "hidden_act": "gelu", "eos_token_id": tokenizer.eos_token_id,
                                     "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    model = AnomCLIPModel.from_clip(CLIPModel(config).eval(), tokenizer=tokenizer)
    rng = np.random.default_rng(0)

    def picture():  # smooth content plus noise: PNGs of a realistic size, not incompressible noise
        base = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize(size, Image.BICUBIC), dtype=np.int16)
        noisy = smooth + rng.integers(-6, 7, smooth.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    references = [picture() for _ in range(3)]
    model.add_category("widget", reference_images=references)
    model.estimate_thresholds(references)
    model.save_pretrained(root / "base")
    model.save_category(str(root / "widget"))
    (root / "images").mkdir()
    paths = []
    for index in range(count):
        paths.append(str(root / "images" / f"{index:05d}.png"))
        picture().save(paths[-1])
    return {"base": str(root / "base"), "category": str(root / "widget"), "images": str(root / "images"),
            "paths": paths, "model": model}


def model_scoring(model, decoded: list, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of the model's own forward over the decoded images (preprocessing included), and the scores."""
    scores = []
    began = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(decoded), batch_size):
            out = model(**model_inputs(model.config, decoded[start:start + batch_size]), category="widget")
            scores.append(out.image_scores.float().numpy())
    return time.perf_counter() - began, np.concatenate(scores)


def run_command(space: dict, output: Path, overlays: str, threshold: float, batch_size: int) -> dict:
    """One `anomclip predict` in a new process; times read from its progress bar as it prints."""
    command = [sys.executable, "-m", "anomclip_hf", "predict", "--base", space["base"], "--category",
               space["category"], "--images", space["images"], "--output", str(output), "--overlays", overlays,
               "--threshold", repr(threshold), "--batch-size", str(batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    began = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(REPO))
    bar_at = first_at = last_at = None
    total = None
    text = b""
    while True:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        now = time.perf_counter() - began
        text += chunk
        for done, total_text in BAR.findall(chunk.decode("utf-8", "replace")):
            done, total = int(done), int(total_text)
            bar_at = now if bar_at is None else bar_at
            if done > 0 and first_at is None:
                first_at = now
            if done == total and last_at is None:
                last_at = now
    process.wait()
    wall = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"anomclip predict failed ({process.returncode}):\n{text.decode(errors='replace')[-3000:]}")
    with open(output / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    overlays_written = len(list((output / "overlays").rglob("*.png"))) if (output / "overlays").exists() else 0
    return {"wall_s": wall, "startup_s": bar_at, "first_score_s": first_at, "scoring_done_s": last_at,
            "total": total, "rows": rows, "overlays": overlays_written}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        space = write_workspace(root, args.model, args.images)
        model = space["model"]
        decoded = [load_image(path) for path in space["paths"]]  # decoded beforehand: the model's share only
        model_scoring(model, decoded[: args.batch_size], args.batch_size)  # warm-up
        baseline_times, scores = [], None
        modes = ("none", "anomalous", "all")
        runs = {mode: [] for mode in modes}
        threshold = None
        for repeat in range(args.repeats):
            seconds, scores = model_scoring(model, decoded, args.batch_size)
            baseline_times.append(seconds)
            if threshold is None:
                threshold = float(np.quantile(scores, 0.8))
            for mode in modes:
                runs[mode].append(run_command(space, root / f"out-{mode}-{repeat}", mode, threshold, args.batch_size))
        n = args.images
        model_rate = n / statistics.median(baseline_times)
        reference_rows = runs["none"][0]["rows"]
        for mode in modes:
            for run in runs[mode]:
                assert run["rows"] == reference_rows, f"--overlays {mode} changed scores.csv"
        by_path = dict(zip(space["paths"], scores))
        largest = max(abs(float(row[1]) - float(by_path[row[0]])) for row in reference_rows)
        anomalous = sum(row[3] == "anomalous" for row in reference_rows)
        results = {"images": n, "model": args.model, "load_average_at_start": load,
                   "load_average_at_end": os.getloadavg(), "model_images_per_s": model_rate,
                   "threshold": threshold, "anomalous": anomalous,
                   "largest_score_difference_vs_model": largest, "runs": {}}
        lines = [f"{n} PNGs of 640x480, model '{args.model}', batch {args.batch_size}, {args.repeats} repeats; "
                 f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start, "
                 f"{os.getloadavg()[0]:.2f} at end",
                 f"model's own scoring of the decoded images (in process): {model_rate:.1f} images/s",
                 f"{anomalous} of {n} decided anomalous; scores.csv identical across overlay modes; largest "
                 f"|scores.csv - model| {largest:.2e} (6 decimals kept)"]
        for mode in modes:
            # the scoring phase: batches 2..last (the first batch's time is in the time to first score)
            phase = statistics.median((n - min(n, args.batch_size)) / (run["scoring_done_s"] - run["first_score_s"])
                                      for run in runs[mode])
            wall = statistics.median(run["wall_s"] for run in runs[mode])
            startup = statistics.median(run["startup_s"] for run in runs[mode])
            first = statistics.median(run["first_score_s"] for run in runs[mode])
            results["runs"][mode] = {"scoring_phase_images_per_s": phase, "ratio_to_model": phase / model_rate,
                                     "end_to_end_images_per_s": n / wall, "wall_s": wall, "startup_s": startup,
                                     "time_to_first_score_s": first, "overlays": runs[mode][0]["overlays"]}
            lines.append(f"--overlays {mode:9s}: {phase:6.1f} images/s while scoring = {phase / model_rate:.2f}x the "
                         f"model; end to end {n / wall:5.1f} images/s ({wall:.1f} s: start-up {startup:.1f} s, first "
                         f"score at {first:.1f} s); {runs[mode][0]['overlays']} overlays")
        report(args, results, lines)


if __name__ == "__main__":
    main()
