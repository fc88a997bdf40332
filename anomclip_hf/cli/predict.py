"""`anomclip predict`: score images with a category (PyTorch, or an exported model on ONNX Runtime)."""

from __future__ import annotations

import sys

from ..flags.numeric import MAX_OUTPUT_SIZE, finite_float, int_range, positive_int
from ..flags.precision import add_precision_argument
from ._common import add_command, add_memory_backbone_argument, base_kwargs, resolve_device


def add_parser(commands) -> None:
    predict = add_command(
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
    add_memory_backbone_argument(predict)
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
    predict.set_defaults(func=run)


def run(args) -> int:
    if args.onnx:
        return _predict_onnx(args)
    if not (args.base and args.category):
        raise ValueError("predict needs --base and --category (a PyTorch model), or --onnx (an exported one)")
    from ..hub.base_source import check_base
    from ..inference.prediction import find_inputs, input_root

    # Before the model loads: a wrong path fails at once. The output folder is never scanned as input.
    images, others, unlistable = find_inputs(args.images, exclude=args.output)
    check_base(args.base)
    from ..inference.prediction import predict_files
    from ..model.modeling_anomclip import AnomCLIPModel

    model = AnomCLIPModel.from_base(args.base, **base_kwargs(args)).to(resolve_device(args.device))
    state = model.load_category(args.category, revision=args.revision)
    if args.threshold is None and state.metadata.get("decision_threshold") is None:
        print(f"warning: category {state.name!r} stores no decision threshold (it needs 2 or more references); "
              "pass --threshold to get decisions", file=sys.stderr)
    if args.save_maps and state.metadata.get("pixel_threshold") is None:
        print(f"warning: category {state.name!r} stores no pixel threshold: --save-maps writes the maps, no masks",
              file=sys.stderr)
    from ..model.precision import resolve_precision

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
    from ..export.runtime import OnnxAnomalyDetector
    from ..inference.prediction import find_inputs, input_root, write_predictions

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
