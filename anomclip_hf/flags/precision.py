"""The precision names and the `--precision` flag, torch-free (the command line builds its parser from here
without importing torch; `precision` decides what they mean on a device).
"""

from __future__ import annotations

import argparse
from typing import Optional
from ..errors import ArgumentError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# Other names of the same choices: accelerate's mixed_precision "no", "none", and torch's dtype names.
_ALIASES = {"no": "fp32", "none": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def normalize_precision(value: Optional[str]) -> str:
    """fp32 / bf16 / fp16 / auto from any accepted spelling (None -> fp32); ValueError names the value."""
    if value is None:
        return "fp32"
    name = _ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
    if name not in PRECISIONS:
        raise ArgumentError(f"precision={value!r}; expected one of {PRECISIONS} (or no/none/float32/bfloat16/float16)")
    return name


def _precision_argument(value: str) -> str:
    try:
        return normalize_precision(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_precision_argument(parser, *, default: Optional[str] = "fp32") -> None:
    """`--precision {fp32,bf16,fp16,auto}` for every command that runs the towers (one definition)."""
    parser.add_argument("--precision", dest="precision", type=_precision_argument, default=default,
                        metavar="{" + ",".join(PRECISIONS) + "}",
                        help="tower precision: fp32, bf16, fp16, or auto = the faster of fp32 and bf16 as measured on this "
                             "machine where it has bf16 instructions (cached under ~/.cache/anomclip), "
                             "else fp32; weights, prompts, memory, scores and maps stay float32 "
                             f"(default: {default or 'the preset'})")


__all__ = ["PRECISIONS", "add_precision_argument", "normalize_precision"]
