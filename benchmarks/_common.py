"""Shared pieces of the benchmarks: the paper-shaped model, interleaved timing, peak memory, output.

Every benchmark measures its baseline in the same process and interleaves the variants (A B A B ...), so a
CPU shared with other work slows both alike; figures are medians over the repeats.

Peak memory is the resident set size (RSS) of the process, read from the kernel: on Linux the peak
(VmHWM in /proc/self/status) is reset before the measured call by writing "5" to /proc/self/clear_refs, so
the figure is the exact high-water mark of that call, not a sample. Before that, memory freed by earlier
calls is handed back to the system (glibc malloc_trim), so the RSS at the start is what is live. Where
clear_refs is not writable, a
background thread samples RSS every millisecond instead (and may miss spikes shorter than that); the
output names the method used.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time
from typing import Callable, Optional

import torch
from transformers import CLIPConfig, CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import (
    build_offline_clip_tokenizer,
    open_clip_bpe_path,
)

MIB = 2 ** 20
# OpenCLIP ViT-B-16-plus-240 (the paper backbone: docs/method/promptad.md, "Backbone"), as a transformers CLIPConfig.
PAPER_TEXT = dict(hidden_size=640, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=10,
                  max_position_embeddings=77, hidden_act="gelu", eos_token_id=49407, bos_token_id=49406)
PAPER_VISION = dict(hidden_size=896, intermediate_size=3584, num_hidden_layers=12, num_attention_heads=14,
                    image_size=240, patch_size=16, hidden_act="gelu")
PAPER_PROJECTION = 640


def paper_shaped_clip(vocab_size: int, seed: int = 0) -> CLIPModel:
    """A CLIPModel with the paper backbone's shapes and random weights."""
    torch.manual_seed(seed)
    config = CLIPConfig(projection_dim=PAPER_PROJECTION, text_config=dict(vocab_size=vocab_size, **PAPER_TEXT),
                        vision_config=PAPER_VISION)
    return CLIPModel(config).eval()


def paper_model(seed: int = 0) -> AnomCLIPModel:
    """The paper-shaped AnomCLIPModel with CLIP's real BPE vocabulary (so prompts have their real lengths)."""
    if open_clip_bpe_path() is None:
        raise SystemExit("the benchmarks need CLIP's real BPE vocabulary: pip install --no-deps open_clip_torch")
    tokenizer = build_offline_clip_tokenizer(real_vocab=True)
    return AnomCLIPModel.from_clip(paper_shaped_clip(len(tokenizer), seed), tokenizer=tokenizer)


def random_pixels(count: int, size: int = 240, seed: int = 0) -> torch.Tensor:
    """Preprocessed-looking inputs (the weights are random, so image content does not matter)."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(functions: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                      warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of every function, run in turn (A B A B ...) `repeats` times after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            synchronize(device)
            began = time.perf_counter()
            function()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - began)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field} line")


def _rss_bytes() -> int:
    try:
        return _read_status_kib("VmRSS") * 1024
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        _read_status_kib("VmHWM")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Hand memory that is freed but still held by glibc's allocator back to the system (Linux only).

    Without it, RSS before a measured call includes what earlier calls freed, and the call reuses it
    unseen: its extra memory would be understated.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: `peak_bytes` (highest RSS inside the block), `start_bytes` (RSS on entry, after
    releasing freed memory), `extra_bytes` (peak - start)."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.method = ""
        self.start_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        release_free_memory()
        self.start_bytes = _rss_bytes()
        if _reset_peak():
            self.method = "kernel peak RSS (VmHWM after clear_refs)"
        else:
            self.method = f"RSS sampled every {self.interval_s * 1e3:g} ms"
            self.peak_bytes = self.start_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            self.peak_bytes = _read_status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    @property
    def extra_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def base_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def report(args: argparse.Namespace, results: dict, lines: list[str]) -> None:
    """Print `results` as JSON (--json) or the human-readable `lines`, with the machine either way."""
    results = {"machine": machine(), **results}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    described = results["machine"]
    print(f"machine: {described['cpu']}, {described['cpu_cores']} cores, {described['torch_threads']} torch threads, "
          f"torch {described['torch']}" + (f", {described['gpu']}" if "gpu" in described else ""))
    for line in lines:
        print(line)
