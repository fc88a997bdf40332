"""What every command module shares: a subcommand with examples in its --help, and `--device` resolution."""

from __future__ import annotations

import argparse
from typing import Optional


def add_command(commands, name: str, help: str, *examples: str, description: Optional[str] = None):
    """A subcommand whose --help ends with its examples."""
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def resolve_device(name: str) -> str:
    """"auto": the first GPU (CUDA, else Apple MPS) if there is one, else the CPU; any other name as is."""
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
