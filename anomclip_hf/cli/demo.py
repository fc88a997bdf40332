"""`anomclip demo`: the whole job on a generated category (evaluation/demo.py runs it)."""

from __future__ import annotations

import json

from ..flags.numeric import nonnegative_int, positive_int
from ._common import add_command


def add_parser(commands) -> None:
    demo = add_command(
        commands, "demo", "the whole job on a generated category (a Hub CLIP, or offline a random pipeline check)",
        "anomclip demo", "anomclip demo --output my_demo --epochs 10 --shots 4",
        "anomclip demo --base openai/clip-vit-large-patch14")
    demo.add_argument("--output", default=None, help="output folder (default: a new anomclip-demo-DATE-TIME folder)")
    demo.add_argument("--base", default=None, help="CLIP or AnomCLIP base (default: openai/clip-vit-base-patch16, "
                      "or an embedded random CLIP when the Hub cannot be reached)")
    demo.add_argument("--shots", type=positive_int, default=2, help="normal reference images (default: %(default)s)")
    demo.add_argument("--seed", type=nonnegative_int, default=0)
    demo.add_argument("--batch-size", type=positive_int, default=8)
    demo.add_argument("--epochs", type=nonnegative_int, default=4, help="prompt-training epochs, 0 for none (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=run)


def run(args) -> int:
    if args.base is not None:
        from ..hub.base_source import check_base

        check_base(args.base)
    from ..evaluation.demo import run_demo

    metrics = run_demo(args.output, base=args.base, shots=args.shots, seed=args.seed, batch_size=args.batch_size,
                       epochs=args.epochs, progress=not args.quiet)
    output = metrics.pop("output_dir")
    print(json.dumps(metrics, indent=2))
    print(f"scores.csv, overlays/, metrics.json and adapter/ written to {output}")
    return 0
