"""The line service (`anomclip watch`): files dropped into a hot folder at a steady rate, delivered to a real
mosquitto broker; latency from the moment a file is complete (renamed into the folder) to the moment a subscriber
receives its MQTT message, p50 and p99; the sustained rate (a burst of files, dropped at once: verdicts per second
at the subscriber, batching on) against the engine alone on the same bytes in batches of 8; and the engine's own
scoring time of one image, measured in the same process on the same loaded Predictor before and after the
stream (median).

Target: p50 latency <= 1.2 x (scoring time of one image + settle time). The settle time is the wait that tells
a finished file from one still being written (`settle`); the scan interval (`poll`) adds up to one more poll.

    python benchmarks/bench_line.py [--files 40] [--rate 0.5] [--settle 0.2] [--model small|tiny] [--json]

--rate: the steady drop rate as a fraction of the sustained rate measured first (below 1: the queue must stay
flat). Needs mosquitto (apt-get install mosquitto) and the line extra.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import apply_threads, base_parser, report
from bench_scale import write_workspace

from anomclip_hf.line.config import parse_config
from anomclip_hf.line.service import running


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (folder / "mosquitto.conf").write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
                                           "allow_anonymous true\n")
    process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                                str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


class Arrivals:
    """A QoS 1 subscriber: input name -> monotonic arrival time."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.times: dict[str, float] = {}
        self.ready = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-line")
        client.on_connect = lambda c, *_: c.subscribe("anomclip/#", qos=1)
        client.on_subscribe = lambda *_: self.ready.set()
        client.on_message = lambda c, u, message: self.times.setdefault(json.loads(message.payload)["input"],
                                                                         time.monotonic())
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.ready.wait(10)
        self.client = client

    def wait_for(self, names, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(name in self.times for name in names):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {sum(n in self.times for n in names)} of {len(names)} verdicts arrived")
            time.sleep(0.005)


def drop(source: str, hot: Path, name: str) -> float:
    """Write beside, rename into place; the monotonic time the file became complete."""
    partial = hot / f".{name}.part"
    shutil.copyfile(source, partial)
    os.rename(partial, hot / name)
    return time.monotonic()


def scoring_seconds(predictor, paths, repeats: int) -> list[float]:
    times = []
    for index in range(repeats):
        data = Path(paths[index % len(paths)]).read_bytes()
        started = time.perf_counter()
        predictor.predict([data])
        times.append(time.perf_counter() - started)
    return times


def batch_rate(predictor, paths, count: int, batch_size: int) -> float:
    """Images per second of the engine alone on `count` files' bytes in batches (the sustained rate's baseline)."""
    data = [Path(paths[index % len(paths)]).read_bytes() for index in range(count)]
    started = time.perf_counter()
    predictor.predict(data, batch_size=batch_size)
    return count / (time.perf_counter() - started)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--files", type=int, default=40, help="files in the steady stream (and in the burst)")
    parser.add_argument("--rate", type=float, default=0.5, help="steady rate as a fraction of the sustained rate")
    parser.add_argument("--settle", type=float, default=0.2, help="seconds a file must stay unchanged")
    parser.add_argument("--poll", type=float, default=0.02, help="seconds between scans of the hot folder")
    parser.add_argument("--model", choices=["small", "tiny"], default="small")
    args = parser.parse_args()
    apply_threads(args)
    root = Path(tempfile.mkdtemp(prefix="bench-line-"))
    broker = None
    try:
        space = write_workspace(root, args.model, 16)
        broker, port = start_mosquitto(root)
        arrivals = Arrivals(port)
        hot = root / "hot"
        hot.mkdir()
        config = parse_config({"sources": [{"name": "line", "folder": str(hot), "base": space["base"],
                                            "category": space["category"], "settle": args.settle, "poll": args.poll,
                                            "batch_size": 8}],
                               "sinks": [{"type": "mqtt", "url": f"mqtt://127.0.0.1:{port}"}],
                               "state": str(root / "state"), "metrics": False})
        with running(config) as service:
            predictor = service.models.predictor(config.sources[0])
            scoring = scoring_seconds(predictor, space["paths"], 12)
            engine_rate = batch_rate(predictor, space["paths"], args.files, 8)
            # the sustained rate: a burst of files at once, verdicts per second at the subscriber
            names = [f"burst{i:04d}.png" for i in range(args.files)]
            started = time.monotonic()
            for i, name in enumerate(names):
                drop(space["paths"][i % len(space["paths"])], hot, name)
            arrivals.wait_for(names, 600)
            sustained = args.files / (max(arrivals.times[n] for n in names) - started)
            # the steady stream at a fraction of it
            interval = 1.0 / (args.rate * sustained)
            complete = {}
            names = [f"steady{i:04d}.png" for i in range(args.files)]
            depth = []
            next_drop = time.monotonic()
            for i, name in enumerate(names):
                time.sleep(max(0.0, next_drop - time.monotonic()))
                complete[name] = drop(space["paths"][i % len(space["paths"])], hot, name)
                depth.append(service.sources[0].queue.qsize())
                next_drop += interval
            arrivals.wait_for(names, 600)
            scoring += scoring_seconds(predictor, space["paths"], 12)
            engine_rate = (engine_rate + batch_rate(predictor, space["paths"], args.files, 8)) / 2
        latency = [arrivals.times[name] - complete[name] for name in names]
        score_one = statistics.median(scoring)
        p50, p99 = percentile(latency, 50), percentile(latency, 99)
        half = len(latency) // 2
        results = {"model": args.model, "files": args.files, "settle_s": args.settle, "poll_s": args.poll,
                   "scoring_s_median": score_one, "sustained_per_s": sustained, "engine_batch_per_s": engine_rate, "steady_rate_per_s": 1 / interval,
                   "latency_p50_s": p50, "latency_p99_s": p99,
                   "latency_p50_first_half_s": statistics.median(latency[:half]),
                   "latency_p50_second_half_s": statistics.median(latency[half:]),
                   "max_queue_depth_at_drop": max(depth), "target_s": 1.2 * (score_one + args.settle),
                   "ratio_p50_to_scoring_plus_settle": p50 / (score_one + args.settle)}
        lines = [f"model {args.model}; settle {args.settle:g} s, poll {args.poll:g} s; {args.files} files per run",
                 f"engine scoring time, one image (median of {len(scoring)}): {score_one * 1000:.1f} ms",
                 f"sustained rate (burst of {args.files}, batching on): {sustained:.1f} files/s; the engine alone on "
                 f"the same bytes in batches of 8: {engine_rate:.1f} images/s (ratio {sustained / engine_rate:.2f})",
                 f"steady stream at {1 / interval:.1f} files/s ({args.rate:g} x sustained): latency file complete -> "
                 f"MQTT message p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; p50 first half "
                 f"{results['latency_p50_first_half_s'] * 1000:.0f} ms, second half "
                 f"{results['latency_p50_second_half_s'] * 1000:.0f} ms; largest queue at a drop: {max(depth)}",
                 f"p50 / (scoring + settle) = {results['ratio_p50_to_scoring_plus_settle']:.2f} (target <= 1.2)"]
        report(args, results, lines)
        arrivals.client.disconnect()
        arrivals.client.loop_stop()
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
