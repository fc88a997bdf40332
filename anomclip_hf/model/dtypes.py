"""The compute-dtype policy of the frozen CLIP towers (weights may be float32, float16 or bfloat16 on disk)."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..errors import ConfigurationError

DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_dtype(value: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A torch dtype from a dtype or its name ("float16", "torch.float16"); None stays None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ConfigurationError(f"dtype {value!r}; expected one of {sorted(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def resolve_compute_dtype(checkpoint_dtype: torch.dtype, device: Union[str, torch.device, None] = None,
                          torch_dtype: Union[str, torch.dtype, None] = None) -> torch.dtype:
    """The dtype the towers compute in: `torch_dtype` when given; else float32 on the CPU (half-precision
    matmuls there are slow and coarse) and the checkpoint's own dtype on an accelerator. Prompt vectors,
    memory banks and prototypes stay float32 whatever this returns."""
    requested = as_dtype(torch_dtype)
    if requested is not None:
        return requested
    return torch.float32 if torch.device(device or "cpu").type == "cpu" else checkpoint_dtype
