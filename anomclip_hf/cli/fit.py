"""`anomclip fit`: train the prompts of one category on a folder of normal images."""

from __future__ import annotations

import json
import os
import sys

from ..errors import ArgumentError
from ..flags.numeric import fraction, nonnegative_int, positive_int
from ._common import add_command, add_memory_backbone_argument, with_memory_backbone

FIT_LOG_FILE = "training_log.jsonl"


def add_parser(commands) -> None:
    from ..training import add_training_arguments

    fit = add_command(
        commands, "fit", "train the prompts of one category on a folder of normal images",
        "anomclip fit --base openai/clip-vit-base-patch16 --references good_parts/ "
        "--category bracket --output runs/fit --epochs 20",
        "anomclip fit --base B --references good/ --category pcb --class-name 'circuit board' "
        "--phrases my_phrases.txt --output runs/pcb",
        "anomclip fit --base B --references line3_good/ --category cap --output runs/cap --memory-size 8192")
    fit.add_argument("--base", required=True)
    fit.add_argument("--references", required=True, help="folder of normal images (or of category sub-folders)")
    fit.add_argument("--category", required=True)
    fit.add_argument("--class-name", default=None, help="text for the class (default: from the category name)")
    fit.add_argument("--output", required=True, help="job folder; the adapter goes to OUTPUT/adapter")
    fit.add_argument("--shots", type=positive_int, default=None, help="k reference images (default: every image)")
    fit.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the shot draw when --shots is smaller")
    fit.add_argument("--phrases", default=None,
                     help="text file of extra anomaly phrases, one per line, '{}' for the class name")
    memory = fit.add_mutually_exclusive_group()
    memory.add_argument("--memory-size", type=positive_int, default=None,
                        help="patch rows the visual memory keeps per memory layer (a greedy coreset; default: every "
                             "row up to 16384, a coreset of 16384 above)")
    memory.add_argument("--coreset-ratio", type=fraction, default=None,
                        help="the fraction of patch rows kept per memory layer, in (0, 1] (1: the exact bank)")
    fit.add_argument("--no-train", action="store_true",
                     help="build the memory and the thresholds with the hand-written prompts, train nothing (as "
                          "--epochs 0)")
    fit.add_argument("--resume-from-checkpoint", dest="resume_from_checkpoint")
    fit.add_argument("--quiet", dest="progress_bar", action="store_false", default=None,
                     help="no progress bars (as --no-progress)")
    add_memory_backbone_argument(fit)
    add_training_arguments(fit)  # --preset, --epochs, --lr, ...
    fit.set_defaults(func=run)


def run(args) -> int:
    from ..hub.base_source import check_base

    check_base(args.base)
    from ..data import load_split
    from ..model.prompts import read_phrases_file
    from ..training import config_from_args, train_category

    train = not (args.no_train or args.epochs == 0)
    if not train:
        if args.resume_from_checkpoint:
            raise ArgumentError("--resume-from-checkpoint resumes a training run; drop it with --no-train / --epochs 0")
        args.epochs = None  # nothing trains: the run length does not apply
    config = with_memory_backbone(config_from_args(args), args.memory_backbone)
    phrases = read_phrases_file(args.phrases) if args.phrases else None
    shots = args.shots if args.shots is not None else len(load_split("folder", args.references, args.category, "train"))
    os.makedirs(args.output, exist_ok=True)
    log_path = os.path.join(args.output, FIT_LOG_FILE)
    with open(log_path, "a", encoding="utf-8") as log:  # the bar shows the loss; every epoch's terms go here
        def log_epoch(epoch: int, logs: dict) -> None:
            log.write(json.dumps(logs) + "\n")
            log.flush()

        summary = train_category(args.base, args.category, args.output, dataset="folder",
                                 data_root=args.references, shots=shots, seed=args.seed, config=config,
                                 class_name=args.class_name, phrases=phrases, callbacks=[log_epoch],
                                 resume_from_checkpoint=args.resume_from_checkpoint,
                                 memory_size=args.memory_size, coreset_ratio=args.coreset_ratio, train=train)
    final = list(summary["final_losses"].items())[-1] if summary["final_losses"] else None
    threshold = summary["decision_threshold"]
    if summary.get("note"):
        print(summary["note"])
    trained = f"{summary['epochs']} epochs" if train else "no prompt training (hand-written prompts)"
    print(f"category {summary['category']!r} fitted on {summary['shots']} reference image(s), {trained}" + (f"; final loss {final[1]['loss']:.4f} ({final[0]})" if final else "")
          + ("" if threshold is None else f"; decision threshold {threshold:.4f}"))
    memory = summary.get("memory")
    if isinstance(memory, dict):
        radius = ", ".join(f"{r:.4f}" for r in memory["coverage_radius"])
        print(f"visual memory: a coreset of {memory['size']} of {memory['rows']} patch rows per layer, coverage radius "
              f"{radius}")
    print(f"adapter: {summary['adapter_dir']}; per-epoch log: {log_path}; summary: "
          f"{os.path.join(args.output, 'summary.json')}")
    if threshold is None:
        print(f"warning: fitted on {summary['shots']} reference image(s): no decision threshold is stored (its "
              "leave-one-out estimate needs 2 or more); predict will give scores only, or pass --threshold",
              file=sys.stderr)
    return 0
