"""Train PromptAD category adapters: one job per (category, shots, seed), shared out over processes.

    accelerate launch training/train.py --base B --dataset mvtec --data-root P --category bottle \
        --shots 1 --seed 0 --output-dir OUT
    accelerate launch --num_processes 4 training/train.py ... --category all --shots 1 2 4 --seeds 0 1 2 3 4
    ... --push-to-hub --hub-org my-org --hub-repo-id "{org}/anomclip-{dataset}-{category}-{shots}shot-seed{seed}"

Also runs as plain `python training/train.py ...`. Writes OUT/<dataset>/<category>/<k>shot/seed<s>/
{adapter/, summary.json, checkpoints/, tensorboard/} and OUT/summary.json; finished jobs are skipped.
With --push-to-hub each finished adapter goes to its own Hub repo (a rerun pushes jobs not pushed yet).
The logic lives in anomclip_hf.training (run_grid / train_category); this file only parses flags.
"""

from __future__ import annotations

import argparse
import sys

from accelerate import PartialState

from anomclip_hf.flags.numeric import nonnegative_int, positive_int
from anomclip_hf.training import add_training_arguments, config_from_args, run_grid
from anomclip_hf.training.arguments import add_hub_arguments, hub_target_from_args
from anomclip_hf.training.grid import GridAbortedError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="AnomCLIP base (folder or repo id) or any CLIP id/folder")
    parser.add_argument("--dataset", default="mvtec", help="mvtec | visa | folder (default: %(default)s)")
    parser.add_argument("--data-root", "--data_root", dest="data_root", required=True)
    parser.add_argument("--category", "--categories", dest="categories", nargs="+", required=True,
                        help="one or more categories, or 'all'")
    parser.add_argument("--shots", nargs="+", type=positive_int, default=[1], help="k normal shots (default: 1)")
    parser.add_argument("--seed", "--seeds", dest="seeds", nargs="+", type=nonnegative_int, default=[0],
                        help="shot-draw seeds (default: 0); the prompt init uses --prompt-seed")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    parser.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint", default=None,
                        help="'latest' (each unfinished job's newest checkpoint) or a checkpoint folder (one job)")
    add_hub_arguments(parser)
    return add_training_arguments(parser)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        results = run_grid(args.base, args.dataset, args.data_root, args.categories, args.shots, args.seeds,
                           args.output_dir, config=config, resume_from_checkpoint=args.resume_from_checkpoint,
                           push_to_hub=hub_target_from_args(args))
    except (ValueError, OSError, GridAbortedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = [r for r in results if r["status"] == "failed"]
    if not PartialState().is_main_process:
        return 1 if failed else 0  # every process holds the gathered results; the main one reports them
    for result in results:
        name = f"{result['dataset']}/{result['category']} {result['shots']}-shot seed {result['seed']}"
        detail = result.get("error") or result.get("adapter_dir", "")
        if result.get("hub_repo_id"):
            detail += f" -> {result['hub_repo_id']} ({result['hub_commit'][:12]})"
        print(f"{result['status']:8s} {name}: {detail}", file=sys.stderr if result["status"] == "failed" else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
