"""Start-up time of the `anomclip` command line: `--help`, an argument error, and the time to the first score
of `anomclip predict`, against `python -c pass`.

Each command is a fresh process (what a user waits for at the prompt); the variants run interleaved (A B C A B
C ...) and the figures are medians. "import ...modeling_anomclip" is what every command paid before the CLI
imported lazily: loading the model module (torch + transformers). "predict, 1 image" is the time to the first
score: a tiny random base and category (saved to a temporary folder here) scoring one image, the whole command
from start to exit with scores.csv written. For each command the heavy packages it imported are listed (none
of Ray, Gradio, LitServe, ONNX, open_clip should load where the command does not use them). Nothing touches the
network.

    python benchmarks/bench_cli_startup.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def anomclip_command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).parent / "anomclip"
    return [str(script)] if script.exists() else [sys.executable, "-m", "anomclip_hf.cli"]


HEAVY = ("torch", "transformers", "ray", "gradio", "litserve", "onnx", "onnxruntime", "onnxscript", "open_clip",
         "openvino", "faiss", "accelerate", "sklearn", "scipy", "fastapi", "tensorboard")


def wall_time(command: list[str], expected_code: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - start
    if result.returncode != expected_code:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}, expected {expected_code}:\n{result.stderr}")
    return elapsed


def heavy_imports(command: list[str]) -> list[str]:
    """The heavy top-level packages a command imports (python -X importtime on the same command)."""
    python = [sys.executable, "-X", "importtime", "-m", "anomclip_hf.cli"] if command[0].endswith("anomclip") \
        else [sys.executable, "-X", "importtime"] + command[1:]
    result = subprocess.run(python + (command[1:] if command[0].endswith("anomclip") else []), capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    names = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
             if line.startswith("import time:")}
    return sorted(names & set(HEAVY))


def tiny_predict_inputs(folder: Path) -> list[str]:
    """A tiny random base, a category of 2 references and one image to score; the predict arguments."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=2)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model = AnomCLIPModel.from_clip(clip, tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)) for _ in range(3)]
    model.add_category("widget", reference_images=images[:2])
    model.save_pretrained(folder / "base")
    model.save_category(str(folder / "adapter"))
    (folder / "images").mkdir()
    images[2].save(folder / "images" / "query.png")
    return ["predict", "--base", str(folder / "base"), "--category", str(folder / "adapter"), "--images",
            str(folder / "images"), "--output", str(folder / "out"), "--quiet", "--device", "cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cli = anomclip_command()
    folder = Path(tempfile.mkdtemp(prefix="anomclip-startup-"))
    predict = tiny_predict_inputs(folder)
    variants = {  # name: (command, exit code)
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "anomclip --help": (cli + ["--help"], 0),
        "anomclip predict --help": (cli + ["predict", "--help"], 0),
        "anomclip predict (argument error)": (cli + ["predict", "--base", "x"], 2),
        "import anomclip_hf.model.modeling_anomclip": ([sys.executable, "-c", "import anomclip_hf.model.modeling_anomclip"], 0),
        "anomclip predict, 1 image (first score)": (cli + predict, 0),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, (command, code) in variants.items():  # warm-up: file-system caches
        wall_time(command, code)
    for _ in range(args.repeats):
        for name, (command, code) in variants.items():
            times[name].append(wall_time(command, code))
    medians = {name: statistics.median(values) for name, values in times.items()}
    heavy = {name: heavy_imports(command) for name, (command, _) in variants.items() if name != "python -c pass"}
    shutil.rmtree(folder, ignore_errors=True)
    base = medians["python -c pass"]
    if args.json:
        print(json.dumps({"medians_s": medians, "heavy_imports": heavy, "repeats": args.repeats, "command": cli,
                          "load_average": os.getloadavg(), "cpus": os.cpu_count()}, indent=2))
        return
    print(f"median wall time over {args.repeats} runs (load average {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs; CLI = {' '.join(Path(c).name for c in cli)})")
    for name, value in medians.items():
        print(f"  {name:42s} {value:7.3f} s   ({value - base:+.3f} s over python -c pass)"
              + (f"; imports {', '.join(heavy[name]) or 'no heavy package'}" if name in heavy else ""))


if __name__ == "__main__":
    main()
