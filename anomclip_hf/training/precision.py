"""Mixed precision for prompt training: the frozen CLIP in bf16/fp16 on a GPU, everything trainable in float32."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from ..modeling_anomclip import AnomCLIPModel

logger = logging.getLogger(__name__)
DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """The requested precision on CUDA; "no" elsewhere (the CPU path is float32 by design)."""
    if requested != "no" and device.type != "cuda":
        logger.warning("mixed_precision=%s ignored on %s: training in float32", requested, device.type)
        return "no"
    return requested


@contextlib.contextmanager
def frozen_clip_dtype(model: AnomCLIPModel, mixed_precision: str) -> Iterator[None]:
    """Run the frozen CLIP in the low-precision dtype inside the block, then restore its exact weights.

    A round trip through bf16 would round the base weights; the originals are kept on the CPU and put back,
    so the saved adapter's prototypes and any later scoring use the untouched model.
    """
    dtype = DTYPES[mixed_precision]
    if dtype is None:
        yield
        return
    tensors = dict(model.clip.named_parameters())
    tensors.update(dict(model.clip.named_buffers()))
    originals = {name: tensor.detach().to("cpu", copy=True) for name, tensor in tensors.items()}
    model.clip.to(dtype)
    try:
        yield
    finally:
        for name, tensor in list(model.clip.named_parameters()) + list(model.clip.named_buffers()):
            tensor.data = originals[name].to(tensor.device)
