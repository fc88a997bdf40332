"""`--precision auto` by measurement: a few forwards of the loaded vision tower in float32 and in bfloat16 decide.

Whether bfloat16 is faster is not a fact of the CPU flags: on one AVX512_BF16 CPU one torch build ran the
tower 1.5x slower under bf16 autocast than in float32, another 0.4x. So where the flags allow bf16 at all, a
short probe times both on this model and picks the faster; the decision and its figures are stored in a small
JSON file under the user's cache folder, keyed by CPU model, torch version, device and the tower's shape, so
the next process reads it instead of measuring again. A file that cannot be read or parsed is ignored (and
replaced). The decision is printed once per process and key.

    ~/.cache/anomclip/precision.json   ($ANOMCLIP_CACHE_DIR or $XDG_CACHE_HOME/anomclip instead, when set)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

PROBE_PRECISIONS = ("fp32", "bf16")
PROBE_REPEATS = 3
# bf16 must be at least this much faster to be chosen: a tie keeps float32 (exact, no drift).
BF16_MIN_SPEEDUP = 1.05
CACHE_FILE = "precision.json"
_PRINTED: set = set()  # keys whose decision this process has printed


def cache_dir() -> Path:
    if os.environ.get("ANOMCLIP_CACHE_DIR"):
        return Path(os.environ["ANOMCLIP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "anomclip"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_key(model, device: torch.device) -> str:
    """What the measurement depends on: the machine, the torch build, the device and the tower's shape."""
    vision = model.config.clip_config.vision_config
    shape = (f"vision {vision.hidden_size}x{vision.num_hidden_layers} {vision.image_size}px/{vision.patch_size}")
    if getattr(model, "memory_backbone", None) is not None:
        dino = model.memory_backbone.config
        shape += f" + dinov2 {dino.hidden_size}x{dino.num_hidden_layers} {model.config.memory_image_size}px"
    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device) if device.type == "cuda" \
        else device.type
    return f"{where} | torch {torch.__version__} | {device.type} | {shape}"


def _probe_inputs(model, batch: int = 1) -> dict:
    """Pixels in the preprocessed range (random content: only the time matters)."""
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    inputs = {"pixel_values": torch.rand(batch, 3, size, size, generator=generator) * 2 - 1}
    if getattr(model, "memory_backbone", None) is not None:
        memory = model.config.memory_image_size
        inputs["memory_pixel_values"] = torch.rand(batch, 3, memory, memory, generator=generator) * 2 - 1
    return {key: value.to(model.device) for key, value in inputs.items()}


def tower_timer(model, repeats: int = PROBE_REPEATS) -> Callable[[], dict]:
    """A function measuring {precision: median seconds of one forward of the vision tower(s)} (one warm-up each,
    then `repeats` interleaved rounds)."""
    def measure() -> dict:
        inputs = _probe_inputs(model)
        dtypes = {"fp32": None, "bf16": torch.bfloat16}
        times = {name: [] for name in PROBE_PRECISIONS}
        with torch.inference_mode():
            for round_index in range(1 + repeats):
                for name in PROBE_PRECISIONS:
                    began = time.perf_counter()
                    low = dtypes[name]  # the towers' autocast, as `precision.tower_autocast` sets it
                    with (torch.autocast(model.device.type, dtype=low) if low else contextlib.nullcontext()):
                        model.encode_images(**inputs)
                    if model.device.type == "cuda":
                        torch.cuda.synchronize(model.device)
                    if round_index:
                        times[name].append(time.perf_counter() - began)
        return {name: statistics.median(values) for name, values in times.items()}

    return measure


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and entry.get("precision") in PROBE_PRECISIONS
            and isinstance(entry.get("seconds"), dict)
            and all(isinstance(entry["seconds"].get(name), (int, float)) for name in PROBE_PRECISIONS))


def _write_cache(path: Path, data: dict) -> None:
    """Atomically (a temporary file renamed over it); a cache that cannot be written is only not cached."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass


def decide(seconds: dict) -> str:
    return "bf16" if seconds["bf16"] * BF16_MIN_SPEEDUP < seconds["fp32"] else "fp32"


def describe_entry(entry: dict, cached: bool) -> str:
    fp32, bf16 = entry["seconds"]["fp32"], entry["seconds"]["bf16"]
    source = f"measured {entry.get('measured_at', 'earlier')}, cached" if cached else "measured now"
    return (f"precision auto -> {entry['precision']}: one vision forward {fp32 * 1e3:.1f} ms in fp32, "
            f"{bf16 * 1e3:.1f} ms under bf16 autocast ({bf16 / fp32:.2f}x; {source})")


def probe_precision(model, device, timer: Optional[Callable[[], dict]] = None, cache_path: Optional[Path] = None,
                    announce: bool = True) -> tuple[str, str]:
    """(fp32 or bf16, the reason with its figures) for `model` on `device`: the cached measurement for this
    machine, torch build and tower shape, else `timer()` (default: `tower_timer(model)`), then cached."""
    device = torch.device(device)
    path = cache_path or cache_dir() / CACHE_FILE
    key = probe_key(model, device)
    data = _read_cache(path)
    entry = data.get(key)
    cached = _valid_entry(entry)
    if not cached:
        seconds = (timer or tower_timer(model))()
        entry = {"precision": decide(seconds), "seconds": {name: float(seconds[name]) for name in PROBE_PRECISIONS},
                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        data[key] = entry
        _write_cache(path, data)
    reason = describe_entry(entry, cached)
    if announce and key not in _PRINTED:
        _PRINTED.add(key)
        print(reason, file=sys.stderr)
    return entry["precision"], reason
