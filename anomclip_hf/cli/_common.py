"""What every command module shares: a subcommand with examples in its --help, and `--device` resolution."""

from __future__ import annotations

import argparse
from typing import Optional


def add_command(commands, name: str, help: str, *examples: str, description: Optional[str] = None):
    """A subcommand whose --help ends with its examples."""
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def resolve_device(name: str, flag: str = "--device"):
    """`--device` as a torch.device this machine has ("auto": a GPU if there is one), else a ValueError naming
    the flag, the value and the devices there are: the Python API's rule (`model.devices.resolve_device`)."""
    from ..model.devices import (
        resolve_device as resolve,  # torch: only once a command runs
    )

    return resolve(name, flag)
