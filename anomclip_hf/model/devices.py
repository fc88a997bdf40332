"""The one device rule of the command line and the Python API: a device name (or `torch.device`) -> a
`torch.device` this machine has, or one ValueError naming the flag, the value and the devices there are.

torch accepts `torch.device("cuda")` on a machine without a GPU and fails later, inside `.to()`, with a raw
RuntimeError; an unknown name ("banana") fails in the parser with a list of every backend torch knows. Both
are refused here, before anything loads.
"""

from __future__ import annotations

from typing import Union

import torch

from ..errors import ConfigurationError

AUTO = "auto"
DeviceLike = Union[str, int, torch.device, None]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The device names this machine can compute on: cpu, then cuda (cuda:0, cuda:1, ...) and mps where there."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def default_device() -> torch.device:
    """"auto": the first GPU (CUDA, else Apple MPS) if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if _mps_available() else "cpu")


def _named(flag: str, value) -> str:
    return f"{flag} {value}" if flag.startswith("--") else f"{flag}={value!r}"


def resolve_device(value: DeviceLike, flag: str = "device") -> torch.device:
    """`value` ("auto", "cpu", "cuda", "cuda:1", "mps", an index or a torch.device) as a torch.device that exists
    here; "auto" or None: `default_device()`. flag: how the caller spells the setting ("--device" on the command
    line, "device" in Python), named in the error."""
    if value is None or value == AUTO:
        return default_device()
    here = available_devices()
    where = f"expected {AUTO} or one of the devices of this machine: {', '.join(here)}"
    try:
        device = value if isinstance(value, torch.device) else torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigurationError(f"{_named(flag, value)}: not a device name; {where}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        if device.index is None or device.index < torch.cuda.device_count():
            return device
        raise ConfigurationError(f"{_named(flag, value)}: this machine has {torch.cuda.device_count()} CUDA GPU(s); {where}")
    if device.type == "mps" and _mps_available() and not device.index:
        return device
    missing = {"cuda": "no CUDA GPU is available on this machine", "mps": "Apple MPS is not available on this machine"}
    missing = missing.get(device.type, "not a device anomclip-hf computes on")
    raise ConfigurationError(f"{_named(flag, value)}: {missing}; {where}")
