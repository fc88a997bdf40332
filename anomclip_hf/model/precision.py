"""Runtime precision: the one place that decides whether the CLIP towers run in float32, bfloat16 or float16.

Only the towers run low, under `torch.autocast`; the weights stay float32, and so do the prompt vectors,
optimizer state, memory bank, prototypes, scores and maps (scoring.py turns autocast off for its math).

    fp32  float32 everywhere (the default)
    bf16  bfloat16 towers; honoured on any device, with a warning where the hardware only emulates it
    fp16  float16 towers; likewise
    auto  where the device has bf16 instructions (a CUDA GPU that supports it; a CPU with AVX512_BF16 or
          AMX-BF16, or an Arm CPU with BF16): with the loaded model, the faster of fp32 and bf16 as measured on
          its vision tower (`precision_probe`, cached); without it, bf16. Else fp32. The log says which and why

Leaf module: imports nothing of the package (scoring, inference, training and the command line use it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..flags.precision import PRECISIONS, normalize_precision

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of CPUs with bfloat16 dot-product instructions (x86: AVX512_BF16, AMX; Arm: BF16).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("flags", "features")):  # x86 "flags", Arm "Features"
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_support() -> tuple[bool, str]:
    """(whether this CPU computes bfloat16 dot products natively, the evidence in words)."""
    probes = (("_is_avx512_bf16_supported", "AVX512_BF16"), ("_is_amx_tile_supported", "AMX"))
    for probe, name in probes:  # torch's own checks (torch >= 2.3 on x86)
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True, f"the CPU has {name} (torch.cpu.{probe})"
    native = sorted(set(_BF16_CPU_FLAGS) & _cpu_flags())
    if native:
        return True, f"the CPU flags include {', '.join(native)}"
    return False, (f"the CPU ({platform.machine()}, torch capability {torch.backends.cpu.get_cpu_capability()}) "
                   "has no AVX512_BF16/AMX/BF16 instructions")


def bf16_support(device: Union[str, torch.device]) -> tuple[bool, str]:
    """(whether `device` runs bfloat16 matrix products natively, why)."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"the GPU {torch.cuda.get_device_name(device)} supports bfloat16"
        return False, "the GPU has no native bfloat16 (compute capability < 8.0)"
    if device.type == "cpu":
        return cpu_bf16_support()
    return False, f"native bfloat16 is not detected on {device.type} devices"


@functools.lru_cache(maxsize=8)
def _native_bf16(device: str) -> bool:
    return bf16_support(device)[0]


def native_bf16(device: Union[str, torch.device]) -> bool:
    """bf16_support(device)[0], remembered per device (the hardware does not change while we run)."""
    return _native_bf16(str(torch.device(device)))


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str  # as asked (normalised): fp32 / bf16 / fp16 / auto
    precision: str  # what runs: fp32 / bf16 / fp16
    reason: str

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return _DTYPES[self.precision]

    def describe(self) -> str:
        return f"precision {self.precision}" + (f" (asked {self.requested})" if self.requested != self.precision
                                                 else "") + f": {self.reason}"


def resolve_precision(requested: Optional[str], device: Union[str, torch.device], model=None) -> PrecisionChoice:
    """What runs on `device` for `requested`, logged with the reason (a warning when it is emulated).

    auto with the loaded `model`: where the hardware has bf16 at all, a short probe of its vision tower in both
    precisions decides (`precision_probe`, cached per machine, torch build and tower shape); without a model
    the hardware flags alone decide."""
    requested = normalize_precision(requested)
    device = torch.device(device)
    if requested == "fp32":
        choice = PrecisionChoice(requested, "fp32", "float32 requested")
    elif requested == "auto":
        native, why = bf16_support(device)
        if native and model is not None:
            from .precision_probe import probe_precision

            measured, figures = probe_precision(model, device)
            choice = PrecisionChoice(requested, measured, f"{why}; {figures}")
        else:
            choice = PrecisionChoice(requested, "bf16" if native else "fp32",
                                     f"{why}: the towers run in bfloat16" if native else f"{why}: staying in float32")
    elif device.type == "cuda" and requested == "fp16":
        choice = PrecisionChoice(requested, "fp16", "float16 requested on a GPU")
    else:
        native, why = bf16_support(device) if requested == "bf16" else (False, f"{device.type} float16 is emulated")
        choice = PrecisionChoice(requested, requested, f"{requested} requested; {why}")
        if not native:
            logger.warning("%s: it runs, but emulated it is usually slower than float32 (use auto or fp32 for "
                           "speed; bf16 here still measures the drift)", choice.describe())
            return choice
    logger.info(choice.describe())
    return choice


def tower_autocast(choice: Union[PrecisionChoice, Optional[torch.dtype]], device: Union[str, torch.device]):
    """The autocast context for the towers: a no-op for float32 (a PrecisionChoice or a dtype, None = float32)."""
    dtype = choice.autocast_dtype if isinstance(choice, PrecisionChoice) else choice
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


__all__ = ["PRECISIONS", "PrecisionChoice", "bf16_support", "cpu_bf16_support", "native_bf16", "normalize_precision",
           "resolve_precision", "tower_autocast"]
