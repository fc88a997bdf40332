"""The `anomclip` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


def autocast_dtype(name: str):
    """A --precision value (or --autocast none/bf16/fp16, its older name) -> None / torch.bfloat16 / torch.float16."""
    import torch

    from .precision import normalize_precision

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[normalize_precision(name)]


def resolve_device(name: str) -> str:
    """"auto": the first GPU (CUDA, else Apple MPS) if there is one, else the CPU; any other name as is."""
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"


def _cmd_demo(args) -> int:
    from .demo import run_demo

    metrics = run_demo(args.output, base=args.base, shots=args.shots, seed=args.seed, batch_size=args.batch_size,
                       epochs=args.epochs, progress=not args.quiet)
    output = metrics.pop("output_dir")
    print(json.dumps(metrics, indent=2))
    print(f"scores.csv, overlays/, metrics.json and adapter/ written to {output}")
    return 0


def _cmd_convert(args) -> int:
    from .convert_open_clip import save_converted_open_clip

    folder = save_converted_open_clip(args.model, args.checkpoint, args.output, config_path=args.config)
    print(f"transformers CLIP folder (model, tokenizer, image processor) written to {folder}; use it as --base")
    return 0


def _cmd_push(args) -> int:
    from .hub import upload_category_folder

    commit = upload_category_folder(args.category, args.repo_id, private=args.private or None, token=args.token,
                                    revision=args.revision, commit_message=args.commit_message)
    print(f"category adapter {args.category} pushed to {args.repo_id} (commit {commit.oid}); load it with "
          f"model.load_category({args.repo_id!r}) or pin revision={commit.oid!r}")
    return 0


def _cmd_predict(args) -> int:
    from .modeling_anomclip import AnomCLIPModel
    from .prediction import find_inputs, predict_files

    images, others = find_inputs(args.images)  # before the model loads: a wrong folder fails at once
    model = AnomCLIPModel.from_base(args.base).to(resolve_device(args.device))
    state = model.load_category(args.category, revision=args.revision)
    if args.threshold is None and state.metadata.get("decision_threshold") is None:
        print(f"warning: category {state.name!r} stores no decision threshold (it needs 2 or more references); "
              "pass --threshold to get decisions", file=sys.stderr)
    from .precision import resolve_precision

    precision = resolve_precision(args.precision, model.device)
    if args.precision != "fp32":
        print(precision.describe(), file=sys.stderr)  # what auto chose, and why
    result = predict_files(model, images, args.output, root=args.images, not_images=others, threshold=args.threshold,
                           batch_size=args.batch_size, output_size=args.output_size, progress=not args.quiet,
                           autocast_dtype=precision.autocast_dtype)
    for path, error in result.failures:
        print(f"skipped {path}: {error}", file=sys.stderr)
    print(result.summary())
    return 0 if result.scores else 1


def _cmd_fit(args) -> int:
    from .data import load_split
    from .prompts import read_phrases_file
    from .training import config_from_args, train_category

    config = config_from_args(args)
    phrases = read_phrases_file(args.phrases) if args.phrases else None
    shots = args.shots or len(load_split("folder", args.references, args.category, "train"))
    summary = train_category(args.base, args.category, args.output, dataset="folder", data_root=args.references,
                             shots=shots, seed=args.seed, config=config, class_name=args.class_name, phrases=phrases,
                             resume_from_checkpoint=args.resume_from_checkpoint)
    keys = ("category", "shots", "epochs", "final_losses", "decision_threshold", "adapter_dir")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluation import run_evaluation
    from .training import config_from_args

    results = run_evaluation(args.base, args.dataset, args.data_root, args.output, categories=args.categories,
                             shots=args.shots, seeds=args.seeds, config=config_from_args(args),
                             resolution=args.resolution, pixel_mode=args.pixel_mode, train=not args.no_train,
                             batch_size=args.batch_size)
    with open(os.path.join(args.output, "results.md"), encoding="utf-8") as handle:
        print(handle.read())
    print(f"{len(results['cells'])} cells; results.csv, results.json and results.md in {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomclip", description="PromptAD few-shot anomaly detection on CLIP")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = _add_command(
        commands, "demo", "the whole job on a generated category (a Hub CLIP, or offline a random pipeline check)",
        "anomclip demo", "anomclip demo --output my_demo --epochs 10 --shots 4",
        "anomclip demo --base openai/clip-vit-large-patch14")
    demo.add_argument("--output", default=None, help="output folder (default: a new anomclip-demo-DATE-TIME folder)")
    demo.add_argument("--base", default=None, help="CLIP or AnomCLIP base (default: openai/clip-vit-base-patch16, "
                      "or an embedded random CLIP when the Hub cannot be reached)")
    demo.add_argument("--shots", type=int, default=2, help="normal reference images (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--epochs", type=int, default=4, help="prompt-training epochs, 0 for none (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    convert = _add_command(
        commands, "convert-open-clip", "convert an open_clip checkpoint to a transformers CLIP folder",
        "anomclip convert-open-clip --model ViT-B-16-plus-240 --checkpoint vit_b_16_plus_240-laion400m_e32-699c4b84.pt "
        "--output vitb16plus-laion400m",
        "anomclip convert-open-clip --model ViT-B-16-plus-240 --checkpoint laion400m_e32 --output vitb16plus",
        "anomclip convert-open-clip --model my-vit --config my-vit.json --checkpoint weights.safetensors "
        "--output my-vit-hf",
        description="Write a transformers CLIPModel + CLIPTokenizer + CLIPImageProcessor folder from open_clip\n"
                    "weights. Architectures CLIP cannot reproduce (timm/ResNet towers, attentional pooling,\n"
                    "LayerScale, CoCa, other tokenizers, ...) are refused, naming the option that prevents it.")
    convert.add_argument("--model", required=True,
                         help="open_clip model name (e.g. ViT-B-16-plus-240; a -quickgelu suffix selects QuickGELU) "
                              "or an open_clip model-config JSON")
    convert.add_argument("--checkpoint", required=True,
                         help="checkpoint file (.safetensors, or a torch state dict) or an open_clip pretrained tag "
                              "(e.g. laion400m_e32; downloaded by open_clip, needs network)")
    convert.add_argument("--config", default=None,
                         help="open_clip model-config JSON for --model (then open_clip itself is not needed)")
    convert.add_argument("--output", required=True, help="folder to write (replaced all at once)")
    convert.set_defaults(func=_cmd_convert)

    push = _add_command(
        commands, "push", "push a category adapter folder to its own Hub repo (with its model card)",
        "anomclip push --category runs/fit/adapter --repo-id user/anomclip-mvtec-bottle-1shot",
        "anomclip push --category runs/fit/adapter --repo-id my-org/anomclip-screws --private --revision experiment",
        description="Check a category adapter folder (as fit/evaluate/train.py write it) and push exactly its\n"
                    "files, with a model card rendered for the repo, as one commit. Log in first\n"
                    "(`hf auth login`) or set HF_TOKEN.")
    push.add_argument("--category", required=True, help="category adapter folder")
    push.add_argument("--repo-id", required=True, help="Hub repo id, e.g. user/anomclip-mvtec-bottle-1shot")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                      "visibility)")
    push.add_argument("--revision", default=None, help="branch to push to, created if needed (default: main)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    push.set_defaults(func=_cmd_push)

    predict = _add_command(
        commands, "predict", "score a folder of images (recursive) with a category adapter",
        "anomclip predict --base openai/clip-vit-base-patch16 --category runs/fit/adapter "
        "--images photos/ --output runs/predict",
        "anomclip predict --base B --category user/anomclip-mvtec-bottle --images photos/ "
        "--output out --threshold 0.3")
    predict.add_argument("--base", required=True, help="the CLIP or AnomCLIP base the category was trained on")
    predict.add_argument("--category", required=True, help="category adapter folder or Hub repo id")
    predict.add_argument("--revision", default=None, help="Hub branch, tag or commit of --category (default: main)")
    predict.add_argument("--images", required=True, help="folder of images (sub-folders included)")
    predict.add_argument("--output", required=True, help="gets scores.csv, overlays/ and errors.csv")
    predict.add_argument("--threshold", type=float, default=None,
                         help="image-score decision threshold (default: the one stored with the category)")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--output-size", type=int, default=None, help="anomaly-map size (default: model input)")
    predict.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps ... (default: a GPU if there is one)")
    from .precision import add_precision_argument

    add_precision_argument(predict, aliases=("--autocast",))  # --autocast none/bf16/fp16: its older name
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    from .training import add_training_arguments

    fit = _add_command(
        commands, "fit", "train the prompts of one category on a folder of normal images",
        "anomclip fit --base openai/clip-vit-base-patch16 --references good_parts/ "
        "--category bracket --output runs/fit --epochs 20",
        "anomclip fit --base B --references good/ --category pcb --class-name 'circuit board' "
        "--phrases my_phrases.txt --output runs/pcb")
    fit.add_argument("--base", required=True)
    fit.add_argument("--references", required=True, help="folder of normal images (or of category sub-folders)")
    fit.add_argument("--category", required=True)
    fit.add_argument("--class-name", default=None, help="text for the class (default: from the category name)")
    fit.add_argument("--output", required=True, help="job folder; the adapter goes to OUTPUT/adapter")
    fit.add_argument("--shots", type=int, default=None, help="k reference images (default: every image)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the shot draw when --shots is smaller")
    fit.add_argument("--phrases", default=None,
                     help="text file of extra anomaly phrases, one per line, '{}' for the class name")
    fit.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint", dest="resume_from_checkpoint")
    add_training_arguments(fit)  # --preset, --epochs, --lr, ...
    fit.set_defaults(func=_cmd_fit)

    evaluate = _add_command(
        commands, "evaluate", "the few-shot benchmark protocol (results.csv/json/md)",
        "anomclip evaluate --base converted/ViT-B-16-plus-240 --dataset mvtec --data-root "
        "/data/mvtec_ad --output runs/eval",
        "anomclip evaluate --base B --dataset visa --data-root /data/VisA --categories pcb1 "
        "--shots 1 --seeds 0 --output runs/visa")
    evaluate.add_argument("--base", required=True)
    evaluate.add_argument("--dataset", required=True, choices=["mvtec", "visa", "folder"])
    evaluate.add_argument("--data-root", required=True)
    evaluate.add_argument("--categories", nargs="+", default=["all"])
    evaluate.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4])
    evaluate.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    evaluate.add_argument("--output", required=True)
    evaluate.add_argument("--resolution", type=int, default=400, help="pixel-metric resolution (default: 400)")
    evaluate.add_argument("--pixel-mode", choices=["exact", "binned"], default="exact")
    evaluate.add_argument("--no-train", action="store_true", help="memory + hand-written prompts, no training")
    evaluate.add_argument("--batch-size", type=int, default=16)
    add_training_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)
    return parser


def _add_command(commands, name: str, help: str, *examples: str, description: Optional[str] = None):
    """A subcommand whose --help ends with its examples."""
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from transformers.utils import logging as transformers_logging

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


if __name__ == "__main__":
    sys.exit(main())
