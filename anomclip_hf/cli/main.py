"""The `anomclip` command line: one module per command (`add_parser(commands)` declares its flags,
`run(args)` does it); each imports what it needs only when it runs, so `anomclip --help` loads no torch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import app, calibrate, convert, demo, evaluate, export, fit, predict, push, serve

COMMANDS = (demo, convert, push, predict, export, fit, calibrate, evaluate, app, serve)  # the order of `anomclip --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomclip", description="PromptAD few-shot anomaly detection on CLIP")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False) or getattr(args, "progress_bar", None) is False:
        from transformers.utils import (
            logging as transformers_logging,  # its "Loading weights" bar too
        )

        transformers_logging.disable_progress_bar()
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as error:
        # Bad input (files, folders, settings, adapters, the Hub refusing, open_clip missing): one clear
        # sentence, not a traceback.
        if os.environ.get("ANOMCLIP_DEBUG"):
            raise
        print(f"anomclip {args.command}: error: {error}", file=sys.stderr)
        return 2
