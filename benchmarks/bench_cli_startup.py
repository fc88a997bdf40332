"""Start-up time of the `anomclip` command line: `--help` and an argument error, against `python -c pass`.

Each command is a fresh process (what a user waits for at the prompt); the variants run interleaved (A B C A B
C ...) and the figures are medians. The last row is what every command paid before the CLI imported lazily:
loading the model module (torch + transformers). Nothing touches the network.

    python benchmarks/bench_cli_startup.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def anomclip_command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).parent / "anomclip"
    return [str(script)] if script.exists() else [sys.executable, "-m", "anomclip_hf.cli"]


def wall_time(command: list[str], expected_code: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - start
    if result.returncode != expected_code:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}, expected {expected_code}:\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cli = anomclip_command()
    variants = {  # name: (command, exit code)
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "anomclip --help": (cli + ["--help"], 0),
        "anomclip predict --help": (cli + ["predict", "--help"], 0),
        "anomclip predict (argument error)": (cli + ["predict", "--base", "x"], 2),
        "import anomclip_hf.model.modeling_anomclip": ([sys.executable, "-c", "import anomclip_hf.model.modeling_anomclip"], 0),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, (command, code) in variants.items():  # warm-up: file-system caches
        wall_time(command, code)
    for _ in range(args.repeats):
        for name, (command, code) in variants.items():
            times[name].append(wall_time(command, code))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["python -c pass"]
    if args.json:
        print(json.dumps({"medians_s": medians, "repeats": args.repeats, "command": cli,
                          "load_average": os.getloadavg(), "cpus": os.cpu_count()}, indent=2))
        return
    print(f"median wall time over {args.repeats} runs (load average {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs; CLI = {' '.join(Path(c).name for c in cli)})")
    for name, value in medians.items():
        print(f"  {name:40s} {value:7.3f} s   ({value - base:+.3f} s over python -c pass)")


if __name__ == "__main__":
    main()
