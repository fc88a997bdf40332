"""The `anomclip` command line."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Optional, Sequence


def _cmd_demo(args) -> int:
    from .demo import run_demo

    metrics = run_demo(args.output, base=args.base, shots=args.shots, seed=args.seed, batch_size=args.batch_size,
                       epochs=args.epochs)
    print(json.dumps(metrics, indent=2))
    print(f"scores.csv, heatmaps/, adapter/, metrics.json (and base/ when embedded) written to {args.output}")
    return 0


def _cmd_convert(args) -> int:
    from .convert_open_clip import save_converted_open_clip

    try:
        folder = save_converted_open_clip(args.model, args.checkpoint, args.output, config_path=args.config)
    except (ValueError, OSError, ImportError) as error:  # refusals, bad files, no open_clip: a message, no trace
        raise SystemExit(f"anomclip convert-open-clip: {error}") from error
    print(f"transformers CLIP folder (model, tokenizer, image processor) written to {folder}; use it as --base")
    return 0


def _cmd_push(args) -> int:
    from .hub import upload_category_folder

    try:
        commit = upload_category_folder(args.category, args.repo_id, private=args.private or None, token=args.token,
                                        revision=args.revision, commit_message=args.commit_message)
    except (ValueError, OSError) as error:  # a bad folder or repo id, the Hub refusing: a message, no trace
        raise SystemExit(f"anomclip push: {error}") from error
    print(f"category adapter {args.category} pushed to {args.repo_id} (commit {commit.oid}); load it with "
          f"model.load_category({args.repo_id!r}) or pin revision={commit.oid!r}")
    return 0


def _cmd_predict(args) -> int:
    from .data.files import list_images
    from .inference import score_images
    from .modeling_anomclip import AnomCLIPModel
    from .visualization import anomaly_overlay

    model = AnomCLIPModel.from_base(args.base)
    state = model.load_category(args.category)
    paths = list_images(args.images)
    if not paths:
        raise SystemExit(f"no images found in {args.images}")
    os.makedirs(os.path.join(args.output, "heatmaps"), exist_ok=True)
    threshold = state.metadata.get("decision_threshold")
    with open(os.path.join(args.output, "scores.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "image_score", "anomalous"])
        for batch in score_images(model, paths, batch_size=args.batch_size, output_size=args.output_size):
            for offset, index in enumerate(batch.indices):
                score = float(batch.image_scores[offset])
                verdict = "" if threshold is None else str(score > threshold).lower()
                writer.writerow([paths[index], f"{score:.6f}", verdict])
                name = os.path.splitext(os.path.basename(paths[index]))[0] + ".png"
                anomaly_overlay(batch.images[offset], batch.anomaly_maps[offset]).save(os.path.join(args.output, "heatmaps", name))
    print(f"{len(paths)} images scored; scores.csv and heatmaps/ in {args.output}")
    return 0


def _cmd_fit(args) -> int:
    from .data import load_split
    from .training import config_from_args, train_category

    config = config_from_args(args)
    shots = args.shots or len(load_split("folder", args.references, args.category, "train"))
    summary = train_category(args.base, args.category, args.output, dataset="folder", data_root=args.references,
                             shots=shots, seed=args.seed, config=config, class_name=args.class_name,
                             resume_from_checkpoint=args.resume_from_checkpoint)
    print(json.dumps({k: summary[k] for k in ("category", "shots", "epochs", "final_losses", "adapter_dir")}, indent=2))
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

    demo = commands.add_parser("demo", help="the whole job on a generated category (offline by default)")
    demo.add_argument("--output", default="anomclip_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--base", default=None, help="CLIP or AnomCLIP base; default: an embedded random CLIP")
    demo.add_argument("--shots", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--epochs", type=int, default=0, help="train the prompts this many epochs (default: none)")
    demo.set_defaults(func=_cmd_demo)

    convert = commands.add_parser(
        "convert-open-clip", help="convert an open_clip checkpoint to a transformers CLIP folder",
        description="Write a transformers CLIPModel + CLIPTokenizer + CLIPImageProcessor folder from open_clip\n"
                    "weights. Architectures CLIP cannot reproduce (timm/ResNet towers, attentional pooling,\n"
                    "LayerScale, CoCa, other tokenizers, ...) are refused, naming the option that prevents it.",
        epilog="examples:\n"
               "  anomclip convert-open-clip --model ViT-B-16-plus-240 "
               "--checkpoint vit_b_16_plus_240-laion400m_e32-699c4b84.pt --output vitb16plus-laion400m\n"
               "  anomclip convert-open-clip --model ViT-B-16-plus-240 --checkpoint laion400m_e32 --output vitb16plus\n"
               "  anomclip convert-open-clip --model my-vit --config my-vit.json --checkpoint weights.safetensors "
               "--output my-vit-hf",
        formatter_class=argparse.RawDescriptionHelpFormatter)
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

    push = commands.add_parser(
        "push", help="push a category adapter folder to its own Hub repo (with its model card)",
        description="Check a category adapter folder (as fit/evaluate/train.py write it) and push exactly its\n"
                    "files, with a model card rendered for the repo, as one commit. Log in first\n"
                    "(`hf auth login`) or set HF_TOKEN.",
        epilog="examples:\n"
               "  anomclip push --category runs/fit/adapter --repo-id user/anomclip-mvtec-bottle-1shot\n"
               "  anomclip push --category runs/fit/adapter --repo-id my-org/anomclip-screws --private "
               "--revision experiment",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    push.add_argument("--category", required=True, help="category adapter folder")
    push.add_argument("--repo-id", required=True, help="Hub repo id, e.g. user/anomclip-mvtec-bottle-1shot")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                      "visibility)")
    push.add_argument("--revision", default=None, help="branch to push to, created if needed (default: main)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    push.set_defaults(func=_cmd_push)

    predict = commands.add_parser("predict", help="score a folder of images with a category adapter")
    predict.add_argument("--base", required=True)
    predict.add_argument("--category", required=True, help="category adapter folder or Hub repo id")
    predict.add_argument("--images", required=True)
    predict.add_argument("--output", required=True)
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--output-size", type=int, default=None, help="anomaly-map size (default: model input)")
    predict.set_defaults(func=_cmd_predict)

    from .training import add_training_arguments

    fit = commands.add_parser("fit", help="train the prompts of one category on a folder of normal images")
    fit.add_argument("--base", required=True)
    fit.add_argument("--references", required=True, help="folder of normal images (or of category sub-folders)")
    fit.add_argument("--category", required=True)
    fit.add_argument("--class-name", default=None, help="text for the class (default: from the category name)")
    fit.add_argument("--output", required=True, help="job folder; the adapter goes to OUTPUT/adapter")
    fit.add_argument("--shots", type=int, default=None, help="k reference images (default: every image)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the shot draw when --shots is smaller")
    fit.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint", dest="resume_from_checkpoint")
    add_training_arguments(fit)  # --preset, --epochs, --lr, ...
    fit.set_defaults(func=_cmd_fit)

    evaluate = commands.add_parser("evaluate", help="the few-shot benchmark protocol (results.csv/json/md)")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
