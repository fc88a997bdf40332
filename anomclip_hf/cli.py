"""The `anomclip` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .numeric_flags import MAX_OUTPUT_SIZE, finite_float, int_range, nonnegative_int, positive_int
from .precision_flags import add_precision_argument

FIT_LOG_FILE = "training_log.jsonl"


def resolve_device(name: str) -> str:
    """"auto": the first GPU (CUDA, else Apple MPS) if there is one, else the CPU; any other name as is."""
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"


def _cmd_demo(args) -> int:
    if args.base is not None:
        from .base_source import check_base

        check_base(args.base)
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
    if args.onnx:
        return _predict_onnx(args)
    if not (args.base and args.category):
        raise ValueError("predict needs --base and --category (a PyTorch model), or --onnx (an exported one)")
    from .base_source import check_base
    from .prediction import find_inputs, input_root

    # Before the model loads: a wrong path fails at once. The output folder is never scanned as input.
    images, others, unlistable = find_inputs(args.images, exclude=args.output)
    check_base(args.base)
    from .modeling_anomclip import AnomCLIPModel
    from .prediction import predict_files

    model = AnomCLIPModel.from_base(args.base).to(resolve_device(args.device))
    state = model.load_category(args.category, revision=args.revision)
    if args.threshold is None and state.metadata.get("decision_threshold") is None:
        print(f"warning: category {state.name!r} stores no decision threshold (it needs 2 or more references); "
              "pass --threshold to get decisions", file=sys.stderr)
    if args.save_maps and state.metadata.get("pixel_threshold") is None:
        print(f"warning: category {state.name!r} stores no pixel threshold: --save-maps writes the maps, no masks",
              file=sys.stderr)
    from .precision import resolve_precision

    precision = resolve_precision(args.precision, model.device)
    if args.precision != "fp32":
        print(precision.describe(), file=sys.stderr)  # what auto chose, and why
    result = predict_files(model, images, args.output, root=input_root(args.images), not_images=others,
                           unlistable=unlistable, threshold=args.threshold, batch_size=args.batch_size,
                           output_size=args.output_size, progress=not args.quiet,
                           autocast_dtype=precision.autocast_dtype, save_maps=args.save_maps)
    return _predict_summary(result)


def _predict_onnx(args) -> int:
    """predict --onnx: the same files from an exported model on ONNX Runtime."""
    given = [flag for flag, value in (("--base", args.base), ("--category", args.category),
                                      ("--revision", args.revision), ("--output-size", args.output_size))
             if value is not None] + (["--precision"] if args.precision != "fp32" else [])
    if given:
        raise ValueError(f"--onnx takes the category, base and map size from the exported model; drop "
                         f"{', '.join(given)}")
    from .export.runtime import OnnxAnomalyDetector
    from .prediction import find_inputs, input_root, write_predictions

    images, others, unlistable = find_inputs(args.images, exclude=args.output)
    detector = OnnxAnomalyDetector(args.onnx, threshold=args.threshold)
    if detector.threshold is None:
        print(f"warning: {args.onnx} stores no decision threshold; pass --threshold to get decisions", file=sys.stderr)
    batches = detector.score_batches(images, batch_size=args.batch_size, progress=not args.quiet, skip_unreadable=True)
    result = write_predictions(batches, images, args.output, root=input_root(args.images), not_images=others,
                               unlistable=unlistable, threshold=detector.threshold,
                               pixel_threshold=detector.pixel_threshold, note=detector.note,
                               save_maps=args.save_maps)
    return _predict_summary(result)


def _predict_summary(result) -> int:
    for path, error in result.failures:
        print(f"skipped {path}: {error}", file=sys.stderr)
    print(result.summary())
    return 0 if result.scores else 1


def _cmd_export(args) -> int:
    from .export import export_onnx
    from .modeling_anomclip import AnomCLIPModel

    model = AnomCLIPModel.from_base(args.base)
    state = model.load_category(args.category, revision=args.revision)
    exported = export_onnx(model, args.output, category=state.name, opset=args.opset, output_size=args.output_size,
                           fp16=args.fp16, quantize=args.quantize)
    print(exported.summary())
    print(f"score with: anomclip predict --onnx {args.output} --images DIR --output OUT")
    return 0


def _cmd_fit(args) -> int:
    from .base_source import check_base

    check_base(args.base)
    from .data import load_split
    from .prompts import read_phrases_file
    from .training import config_from_args, train_category

    config = config_from_args(args)
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
                                 resume_from_checkpoint=args.resume_from_checkpoint)
    final = list(summary["final_losses"].items())[-1] if summary["final_losses"] else None
    threshold = summary["decision_threshold"]
    if summary.get("note"):
        print(summary["note"])
    print(f"category {summary['category']!r} fitted on {summary['shots']} reference image(s), {summary['epochs']} "
          f"epochs" + (f"; final loss {final[1]['loss']:.4f} ({final[0]})" if final else "")
          + ("" if threshold is None else f"; decision threshold {threshold:.4f}"))
    print(f"adapter: {summary['adapter_dir']}; per-epoch log: {log_path}; summary: "
          f"{os.path.join(args.output, 'summary.json')}")
    if threshold is None:
        print(f"warning: fitted on {summary['shots']} reference image(s): no decision threshold is stored (its "
              "leave-one-out estimate needs 2 or more); predict will give scores only, or pass --threshold",
              file=sys.stderr)
    return 0


def _cmd_evaluate(args) -> int:
    from .base_source import check_base

    check_base(args.base)
    data_root = _evaluation_data(args)
    from .evaluation import run_evaluation
    from .training import config_from_args

    results = run_evaluation(args.base, args.dataset, data_root, args.output, categories=args.categories,
                             shots=args.shots, seeds=args.seeds, config=config_from_args(args),
                             resolution=args.resolution, pixel_mode=args.pixel_mode, train=not args.no_train,
                             batch_size=args.batch_size)
    with open(os.path.join(args.output, "results.md"), encoding="utf-8") as handle:
        print(handle.read())
    print(f"{len(results['cells'])} cells; results.csv, results.json and results.md in {args.output}")
    return 0


def _evaluation_data(args):
    """--data-root, or for --dataset folder the labelled folders (--normal-dir, --abnormal-dir, --mask-dir)."""
    folders = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir")
    if args.dataset == "folder" and args.normal_dir is not None:
        if args.abnormal_dir is None:
            raise ValueError("--dataset folder --normal-dir needs --abnormal-dir (the anomalous test images)")
        for name in folders:
            value = getattr(args, name)
            if value is not None and not os.path.isdir(value):
                raise ValueError(f"--{name.replace('_', '-')} {value}: folder does not exist")
        from .data.labelled_folder import LabelledFolder

        return LabelledFolder(args.normal_dir, args.abnormal_dir, mask_dir=args.mask_dir,
                              normal_test_dir=args.normal_test_dir,
                              category=None if args.categories == ["all"] else args.categories[0])
    given = [f"--{name.replace('_', '-')}" for name in folders if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} go with --dataset folder --normal-dir DIR --abnormal-dir DIR")
    if args.data_root is None:
        raise ValueError(f"--dataset {args.dataset} needs --data-root"
                         + (" (or --normal-dir and --abnormal-dir)" if args.dataset == "folder" else ""))
    return args.data_root


def _cmd_app(args) -> int:
    from .app.launch import launch_app

    limits = {name: getattr(args, name) for name in ("max_files", "max_file_mb") if getattr(args, name) is not None}
    launch_app(base=args.base, category=args.category, host=args.host, port=args.port, **limits)
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
    demo.add_argument("--shots", type=positive_int, default=2, help="normal reference images (default: %(default)s)")
    demo.add_argument("--seed", type=nonnegative_int, default=0)
    demo.add_argument("--batch-size", type=positive_int, default=8)
    demo.add_argument("--epochs", type=nonnegative_int, default=4, help="prompt-training epochs, 0 for none (default: %(default)s)")
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
        "--output out --threshold 0.3",
        "anomclip predict --onnx bottle.onnx --images photos/ --output runs/predict-onnx")
    predict.add_argument("--base", default=None, help="the CLIP or AnomCLIP base the category was trained on")
    predict.add_argument("--category", default=None, help="category adapter folder or Hub repo id")
    predict.add_argument("--onnx", default=None, help="an exported model (anomclip export) instead of --base and "
                         "--category: ONNX Runtime, no torch")
    predict.add_argument("--revision", default=None, help="Hub branch, tag or commit of --category (default: main)")
    predict.add_argument("--images", required=True, nargs="+",
                         help="image files and/or folders of images (sub-folders included)")
    predict.add_argument("--output", required=True, help="gets scores.csv, overlays/ and errors.csv")
    predict.add_argument("--threshold", type=finite_float, default=None,
                         help="image-score decision threshold (default: the one stored with the category)")
    predict.add_argument("--batch-size", type=positive_int, default=16)
    predict.add_argument("--output-size", type=int_range(1, MAX_OUTPUT_SIZE), default=None,
                         help=f"anomaly-map size, at most {MAX_OUTPUT_SIZE} (default: model input)")
    predict.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps ... (default: a GPU if there is one)")
    add_precision_argument(predict, aliases=("--autocast",))  # --autocast none/bf16/fp16: its older name
    predict.add_argument("--save-maps", action="store_true",
                         help="also write each raw anomaly map (maps/*.npy, float32) and predicted-defect mask "
                              "(masks/*.png, 255 = above the pixel threshold)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    export = _add_command(
        commands, "export", "export a category to one ONNX graph (+ a JSON of preprocessing and thresholds)",
        "anomclip export --base openai/clip-vit-base-patch16 --category runs/fit/adapter --output bottle.onnx",
        "anomclip export --base B --category user/anomclip-mvtec-bottle --output bottle-int8.onnx --quantize int8",
        description="Write the whole forward of one category (vision tower, memory search, text prototypes,\n"
                    "fusion, maps) as one ONNX graph: pixel_values (batch, 3, S, S) -> image_scores (batch,),\n"
                    "anomaly_maps (batch, H, W); and OUTPUT.json beside it. Score it with `anomclip predict\n"
                    "--onnx` or anomclip_hf.export.OnnxAnomalyDetector (numpy, pillow, onnxruntime only).\n"
                    "Needs the onnx extra: pip install \"anomclip-hf[onnx]\".")
    export.add_argument("--base", required=True, help="the CLIP or AnomCLIP base the category was trained on")
    export.add_argument("--category", required=True, help="category adapter folder or Hub repo id (with references)")
    export.add_argument("--revision", default=None, help="Hub branch, tag or commit of --category (default: main)")
    export.add_argument("--output", required=True, help="the .onnx file to write (its JSON goes to OUTPUT.json)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    export.add_argument("--output-size", type=int, default=None, help="anomaly-map size (default: model input)")
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights and vision tower (for GPU runtimes)")
    precision.add_argument("--quantize", choices=["int8"], default=None,
                           help="dynamic int8 quantization of the matrix-product weights (smaller; drift printed)")
    export.set_defaults(func=_cmd_export)

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
    fit.add_argument("--shots", type=positive_int, default=None, help="k reference images (default: every image)")
    fit.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the shot draw when --shots is smaller")
    fit.add_argument("--phrases", default=None,
                     help="text file of extra anomaly phrases, one per line, '{}' for the class name")
    fit.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint", dest="resume_from_checkpoint")
    fit.add_argument("--quiet", dest="progress_bar", action="store_false", default=None,
                     help="no progress bars (as --no-progress)")
    add_training_arguments(fit)  # --preset, --epochs, --lr, ...
    fit.set_defaults(func=_cmd_fit)

    evaluate = _add_command(
        commands, "evaluate", "the few-shot benchmark protocol (results.csv/json/md)",
        "anomclip evaluate --base converted/ViT-B-16-plus-240 --dataset mvtec --data-root "
        "/data/mvtec_ad --output runs/eval",
        "anomclip evaluate --base B --dataset visa --data-root /data/VisA --categories pcb1 "
        "--shots 1 --seeds 0 --output runs/visa",
        "anomclip evaluate --base B --dataset folder --normal-dir good/ --abnormal-dir bad/ --mask-dir masks/ "
        "--output runs/mine")
    evaluate.add_argument("--base", required=True)
    evaluate.add_argument("--dataset", required=True, choices=["mvtec", "visa", "folder"])
    evaluate.add_argument("--data-root", default=None, help="MVTec / VisA root (or a folder of normal images)")
    labelled = evaluate.add_argument_group("--dataset folder with labels (as anomalib's Folder data set)")
    labelled.add_argument("--normal-dir", default=None, help="normal images: shots are drawn from them; a fifth is "
                          "held out as normal test images unless --normal-test-dir is given")
    labelled.add_argument("--abnormal-dir", default=None, help="anomalous images (sub-folder names = defect types)")
    labelled.add_argument("--mask-dir", default=None, help="their masks, same relative path and name (or NAME_mask); "
                          "without it no pixel metrics")
    labelled.add_argument("--normal-test-dir", default=None, help="normal test images (default: held out)")
    evaluate.add_argument("--categories", nargs="+", default=["all"])
    evaluate.add_argument("--shots", nargs="+", type=positive_int, default=[1, 2, 4])
    evaluate.add_argument("--seeds", nargs="+", type=nonnegative_int, default=[0, 1, 2, 3, 4])
    evaluate.add_argument("--output", required=True)
    evaluate.add_argument("--resolution", type=positive_int, default=400, help="pixel-metric resolution (default: 400)")
    evaluate.add_argument("--pixel-mode", choices=["exact", "binned"], default="exact")
    evaluate.add_argument("--no-train", action="store_true", help="memory + hand-written prompts, no training")
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    add_training_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    app = _add_command(
        commands, "app", "a web page (Gradio) to fit a category and inspect its results",
        "anomclip app", "anomclip app --base openai/clip-vit-base-patch16 --category runs/fit/adapter",
        "anomclip app --base anomclip-demo-random --port 7861",
        description="Serve a web page to fit a category on uploaded good images, score test images (gallery of\n"
                    "overlays, threshold slider, scores.csv) and download or push the adapter. Needs the app\n"
                    "extra: pip install -e \".[app]\". Listens on 127.0.0.1 only unless --host says otherwise.")
    app.add_argument("--base", default=None, help="CLIP or AnomCLIP base, id or folder (default: as `anomclip demo`; "
                     "anomclip-demo-random: the embedded random base, a pipeline check)")
    app.add_argument("--category", default=None, help="adapter folder or Hub repo id to load at start")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                     "only; 0.0.0.0 opens it to the network)")
    app.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    app.add_argument("--max-files", type=int, default=None, help="files per upload (default: 200)")
    app.add_argument("--max-file-mb", type=float, default=None, help="size limit per uploaded file (default: 20)")
    app.set_defaults(func=_cmd_app)
    return parser


def _add_command(commands, name: str, help: str, *examples: str, description: Optional[str] = None):
    """A subcommand whose --help ends with its examples."""
    return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False) or getattr(args, "progress_bar", None) is False:
        from transformers.utils import logging as transformers_logging  # its "Loading weights" bar too

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
