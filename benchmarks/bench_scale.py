"""Scale-out and serving: images/s of `anomclip predict` in one process, under `accelerate launch` with 2
processes and on a Ray actor pool of 2 actors, over the same folder; and `anomclip serve` latency (p50/p99) and
images/s with 1 and 8 concurrent clients, dynamic batching on (--max-batch-size 8) and off (1).

Each engine runs as the command a user types (a new process, model loading and, for Ray, the local cluster's
start included), so the figures are end-to-end wall times; the number of CPU cores is printed with them (the
engines split the work over processes, not over cores a machine does not have). Every engine's scores are
checked against an in-process Predictor: count in = count out, and the largest difference (scores.csv keeps 6
decimals, the Ray rows full precision). Serve clients each send the same images in turn over keep-alive
connections; the first requests of each run (warm-up) are not counted.

    python benchmarks/bench_scale.py [--images 96] [--requests 48] [--model small|tiny] [--quick] [--json]
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import base_parser, report
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.inference.predictor import Predictor
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

REPO = Path(__file__).resolve().parents[1]
# "small": a ViT of 6 blocks, 384 wide, 160 px in 16 px patches (100 patches); "tiny": the test suite's model
MODELS = {"small": (dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                         image_size=160, patch_size=16), dict(hidden_size=256, intermediate_size=1024,
                                                              num_hidden_layers=4, num_attention_heads=4)),
          "tiny": (dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                        image_size=30, patch_size=2), dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                                           num_attention_heads=4))}


def write_workspace(root: Path, kind: str, count: int) -> dict:
    """base/, widget/ (3 references, leave-one-out thresholds) and images/ (`count` PNGs of 128 px)."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    vision, text = MODELS[kind]
    torch_config = CLIPConfig(projection_dim=128, vision_config={**vision, "hidden_act": "gelu"},
                              text_config={**text, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                           "hidden_act": "gelu", "eos_token_id": tokenizer.eos_token_id,
                                           "bos_token_id": tokenizer.bos_token_id,
                                           "pad_token_id": tokenizer.pad_token_id})
    model = AnomCLIPModel.from_clip(CLIPModel(torch_config).eval(), tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    picture = lambda: Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))  # noqa: E731
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
            "paths": paths}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1"}


def run_engine(name: str, space: dict, output: Path) -> float:
    """Wall seconds of one engine's whole command."""
    predict = ["-m", "anomclip_hf", "predict", "--base", space["base"], "--category", space["category"], "--images",
               space["images"], "--output", str(output), "--quiet", "--batch-size", "8"]
    command = {"single": [sys.executable, *predict],
               "accelerate x2": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                 "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                 "--main_process_port", str(free_port()), *predict],
               "ray x2": [sys.executable, *predict, "--engine", "ray", "--ray-actors", "2"]}[name]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=str(REPO))
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return wall


def engine_agreement(output: Path, reference: dict, ray: bool) -> tuple[int, float]:
    """(rows out, largest |score - reference|): scores.csv, or Ray's full-precision rows."""
    if ray:
        from anomclip_hf.serving.ray_engine import read_rows

        rows = read_rows(str(output / "ray"))
        scores = dict(zip(rows["path"], rows["image_score"]))
    else:
        with open(output / "scores.csv", newline="", encoding="utf-8") as handle:
            scores = {row["path"]: float(row["image_score"]) for row in csv.DictReader(handle)}
    if sorted(scores) != sorted(reference):
        raise SystemExit(f"{output}: {len(scores)} rows for {len(reference)} images, or other paths")
    return len(scores), max(abs(scores[path] - value) for path, value in reference.items())


@contextlib.contextmanager
def server(space: dict, batch: int):
    port = free_port()
    command = [sys.executable, "-m", "anomclip_hf", "serve", "--base", space["base"], "--category", space["category"],
               "--port", str(port), "--device", "cpu", "--max-batch-size", str(batch), "--batch-timeout", "0.005"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(),
                               cwd=str(REPO), start_new_session=True)
    import httpx

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def load(url: str, bodies: list, clients: int, requests: int, warmup: int = 3) -> dict:
    """`clients` threads, each posting `requests` images (after `warmup` uncounted ones) on its own connection."""
    import httpx

    latencies, errors, ready = [], [], threading.Barrier(clients + 1)

    def client(number: int):
        with httpx.Client(timeout=120) as session:
            post = lambda i: session.post(url + "/predict/widget", content=bodies[(number + i) % len(bodies)],  # noqa: E731
                                          headers={"content-type": "image/png"})
            for i in range(warmup):
                post(i)
            ready.wait()
            for i in range(requests):
                start = time.perf_counter()
                answer = post(i)
                latencies.append(time.perf_counter() - start)
                if answer.status_code != 200:
                    errors.append(answer.status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    values = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "images_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=96, help="images in the folder (default: 96)")
    parser.add_argument("--requests", type=int, default=48, help="counted requests per serve client (default: 48)")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--quick", action="store_true", help="32 images, 16 requests per client")
    parser.add_argument("--skip", nargs="*", default=[], choices=["engines", "serve"])
    args = parser.parse_args()
    if args.quick:
        args.images, args.requests = 32, 16
    results, lines = {"model": args.model, "images": args.images, "load_average": os.getloadavg()}, []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        space = write_workspace(Path(work), args.model, args.images)
        predictor = Predictor.from_pretrained(space["base"], space["category"])
        reference = {r.source: r.score for r in predictor.predict(space["paths"])}
        lines.append(f"model {args.model}, {args.images} images of 128 px, {os.cpu_count()} CPU cores, "
                     f"load average before: {results['load_average'][0]:.1f}")
        if "engines" not in args.skip:
            results["engines"] = {}
            for name in ("single", "accelerate x2", "ray x2"):
                output = Path(work) / name.replace(" ", "-")
                wall = run_engine(name, space, output)
                count, drift = engine_agreement(output, reference, ray=name.startswith("ray"))
                results["engines"][name] = {"wall_s": wall, "images_per_s": args.images / wall, "rows": count,
                                            "max_abs_diff": drift}
            single = results["engines"]["single"]["images_per_s"]
            for name, figures in results["engines"].items():
                lines.append(f"  {name:14s} {figures['wall_s']:6.1f} s  {figures['images_per_s']:6.2f} images/s  "
                             f"x{figures['images_per_s'] / single:.2f} of single  rows {figures['rows']}/{args.images}"
                             f"  max |diff| {figures['max_abs_diff']:.1e}")
        if "serve" not in args.skip:
            bodies = [Path(p).read_bytes() for p in space["paths"][:16]]
            results["serve"] = {}
            for label, batch in (("batching on (8)", 8), ("batching off (1)", 1)):
                with server(space, batch) as url:
                    results["serve"][label] = [load(url, bodies, clients, args.requests) for clients in (1, 8)]
            for label, runs in results["serve"].items():
                for run in runs:
                    lines.append(f"  serve {label:17s} {run['clients']} client(s): {run['images_per_s']:6.1f} images/s"
                                 f"  p50 {run['p50_ms']:7.1f} ms  p99 {run['p99_ms']:7.1f} ms  errors {run['errors']}")
            on, off = (results["serve"][label][1] for label in ("batching on (8)", "batching off (1)"))
            results["serve_ratio_8_clients"] = on["images_per_s"] / off["images_per_s"]
            lines.append(f"  8 clients, batching on / off: x{results['serve_ratio_8_clients']:.2f} images/s "
                         f"(target >= 1.5); p99 / p50 with batching: {on['p99_ms'] / on['p50_ms']:.2f} (target <= 3)")
    results["load_average_after"] = os.getloadavg()
    lines.append(f"load average after: {results['load_average_after'][0]:.1f}")
    report(args, results, lines)


if __name__ == "__main__":
    main()
