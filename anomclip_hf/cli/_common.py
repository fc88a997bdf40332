"""What every command module shares: a subcommand with examples in its --help, and `--device` resolution."""

from __future__ import annotations

import argparse
from typing import Optional

from ..flags.numeric import sensitivity_value, threshold_value


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


def add_decision_arguments(parser, scope: str) -> None:
    """--threshold T | --sensitivity S (predict, serve): the decision over `scope`'s stored threshold, one rule
    for both (`model.decisions`: threshold = 2 x stored x (1 - sensitivity))."""
    decide = parser.add_mutually_exclusive_group()
    decide.add_argument("--threshold", type=threshold_value, default=None,
                        help=f"image-score decision threshold, in (0, 2] (default: {scope}'s stored threshold)")
    decide.add_argument("--sensitivity", type=sensitivity_value, default=None,
                        help=f"0-1 over {scope}'s stored threshold: 0.5 decides at it, higher flags more images "
                             "(threshold = 2 x stored x (1 - sensitivity); docs/guides/thresholds.md)")


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


def add_tiling_arguments(parser, recorded: bool = True) -> None:
    """--tile and --tile-overlap (docs/guides/tiling.md). recorded: the adapter's tiling applies when they are
    left out (predict, evaluate, serve, export); else they choose it (fit)."""
    from ..io.tiling import DEFAULT_OVERLAP, parse_overlap, parse_tile

    default = " (default: what the adapter's fit used)" if recorded else " (default: whole images, resized)"
    parser.add_argument("--tile", type=parse_tile, default=None, metavar="SIZE|auto",
                        help="score at native resolution in tiles of SIZE pixels, or auto (from the tower's and the "
                             "image's size)" + default)
    parser.add_argument("--tile-overlap", type=parse_overlap, default=None, metavar="PIXELS|FRACTION",
                        help=f"overlap of neighbouring tiles: pixels or a fraction of the tile (default: "
                             f"{DEFAULT_OVERLAP}" + (", or the adapter's)" if recorded else ")"))
