"""What every command module shares: a subcommand with examples in its --help, and `--device` resolution."""

from __future__ import annotations

import argparse
from typing import Optional


def add_command(commands, name: str, help: str, *examples: str, description: Optional[str] = None):
    """A subcommand whose --help ends with its examples."""
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


MEMORY_BACKBONE_HELP = ("a DINOv2 model (Hub id or folder, e.g. facebook/dinov2-small, with or without registers) as "
                        "the visual memory instead of CLIP's (AnomalyDINO's patch memory, fused with the prompts); "
                        "an adapter made with one needs the same one")


def add_memory_backbone_argument(parser) -> None:
    """--memory-backbone ID_OR_FOLDER (fit, predict, evaluate, export): the optional DINOv2 memory."""
    parser.add_argument("--memory-backbone", dest="memory_backbone", default=None,
                        metavar="ID_OR_FOLDER", help=MEMORY_BACKBONE_HELP)


def with_memory_backbone(config, memory_backbone: Optional[str]):
    """A TrainingConfig whose model settings name the memory backbone (unchanged without one)."""
    return config if memory_backbone is None else config.with_overrides({"model": {"memory_backbone": memory_backbone}})


def base_kwargs(args) -> dict:
    """from_base keyword arguments of the shared flags (--memory-backbone)."""
    return {} if getattr(args, "memory_backbone", None) is None else {"memory_backbone": args.memory_backbone}


def resolve_device(name: str, flag: str = "--device"):
    """`--device` as a torch.device this machine has ("auto": a GPU if there is one), else a ValueError naming
    the flag, the value and the devices there are: the Python API's rule (`model.devices.resolve_device`)."""
    from ..model.devices import (
        resolve_device as resolve,  # torch: only once a command runs
    )

    return resolve(name, flag)
