"""`anomclip predict`: score images with a category (PyTorch, or an exported model on ONNX Runtime)."""

from __future__ import annotations

import sys

from ..errors import ArgumentError
from ..flags.numeric import (
    MAX_OUTPUT_SIZE,
    int_range,
    nonnegative_float,
    positive_int,
)
from ..flags.precision import add_precision_argument
from ._common import (
    add_command,
    add_decision_arguments,
    add_memory_backbone_argument,
    add_tiling_arguments,
    resolve_device,
)


def add_parser(commands) -> None:
    predict = add_command(
        commands, "predict", "score a folder of images (recursive) with a category adapter",
        "anomclip predict --base openai/clip-vit-base-patch16 --category runs/fit/adapter "
        "--images photos/ --output runs/predict",
        "anomclip predict --base B --category user/anomclip-mvtec-bottle --images photos/ "
        "--output out --threshold 0.3",
        "anomclip predict --onnx bottle.onnx --images photos/ --output runs/predict-onnx",
        "anomclip predict --engine ray --ray-actors 4 --base B --category C --images photos/ --output out")
    predict.add_argument("--base", default=None, help="the CLIP or AnomCLIP base the category was trained on")
    predict.add_argument("--category", default=None, help="category adapter folder or Hub repo id")
    predict.add_argument("--onnx", default=None, help="an exported model (anomclip export) instead of --base and "
                         "--category: ONNX Runtime, no torch")
    predict.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                         help="the runtime of --onnx: onnxruntime (default) or openvino (the openvino extra; float32)")
    add_memory_backbone_argument(predict)
    add_tiling_arguments(predict)
    predict.add_argument("--revision", default=None, help="Hub branch, tag or commit of --category (default: main)")
    predict.add_argument("--images", required=True, nargs="+",
                         help="image files and/or folders of images (sub-folders included)")
    predict.add_argument("--output", required=True, help="gets scores.csv, overlays/ and errors.csv")
    add_decision_arguments(predict, "the category")
    predict.add_argument("--labels", default=None, metavar="FOLDER_OR_CSV",
                         help="labels of the images: a folder with normal/ (or good/) and defect-type sub-folders, or "
                              "a CSV of path,label; adds AUROC, F1 and confusion counts to the summary and writes "
                              "OUTPUT/metrics.json")
    predict.add_argument("--batch-size", type=positive_int, default=16)
    predict.add_argument("--output-size", type=int_range(1, MAX_OUTPUT_SIZE), default=None,
                         help=f"anomaly-map size, at most {MAX_OUTPUT_SIZE} (default: model input)")
    predict.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps ... (default: a GPU if there is one)")
    add_precision_argument(predict)
    predict.add_argument("--overlays", choices=["all", "anomalous", "none"], default="anomalous",
                         help="which images get an overlay PNG in overlays/: all, anomalous (at the decision "
                              "threshold; none without one) or none (default: %(default)s, so a large folder "
                              "costs no time and disk for its normal images)")
    predict.add_argument("--save-maps", action="store_true",
                         help="also write each raw anomaly map (maps/*.npy, float32) and predicted-defect mask "
                              "(masks/*.png, 255 = above the pixel threshold)")
    scale = predict.add_argument_group(
        "scale-out (README, Scale)", "several processes: `accelerate launch --num_processes N -m anomclip_hf predict "
        "...` (without GPUs: `--multi_gpu --num_processes N`, CPU processes) shares the images out and writes one "
        "scores.csv; a rerun skips finished shards. A cluster: --engine ray.")
    scale.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this process (or its share under `accelerate launch --num_processes N -m "
                            "anomclip_hf predict ...`); ray: a Ray Data actor pool (extra [ray]) (default: %(default)s)")
    scale.add_argument("--ray-address", default=None, help="a running Ray cluster (auto, ray://HOST:10001); default: "
                       "a local one, started and stopped by this command")
    scale.add_argument("--ray-actors", type=positive_int, default=2, help="actors, one model each (default: %(default)s)")
    scale.add_argument("--ray-gpus", type=nonnegative_float, default=0.0,
                       help="GPUs per actor, e.g. 1 or 0.5 (default: %(default)s)")
    scale.add_argument("--ray-format", choices=["parquet", "csv"], default="parquet",
                       help="the streamed row files under OUTPUT/ray/ (default: %(default)s)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=run)


def run(args) -> int:
    from ..inference.inputs import find_inputs, input_root
    from ..serving.shards import launched_processes

    labels = None
    if args.labels is not None:  # before the model loads: a wrong labels file fails at once
        from ..evaluation.labelled_predictions import read_labels

        labels = read_labels(args.labels)
    spec = _spec(args)
    # Before the model loads: a wrong path fails at once. The output folder is never scanned as input.
    images, others, unlistable = find_inputs(args.images, exclude=args.output)
    where = dict(root=input_root(args.images), not_images=others, unlistable=unlistable)
    pictures = dict(overlays=args.overlays, save_maps=args.save_maps)
    if args.engine == "ray":
        if launched_processes() > 1:
            raise ArgumentError("--engine ray shares the work over its own actors; run it once, not under accelerate launch")
        from ..serving.ray_engine import predict_with_ray

        return _predict_summary(args, labels, predict_with_ray(spec, images, args.output, address=args.ray_address,
                                                 actors=args.ray_actors, num_gpus=args.ray_gpus,
                                                 batch_size=args.batch_size, output_format=args.ray_format,
                                                 **pictures, **where))
    given = [flag for flag, used in (("--ray-address", args.ray_address is not None), ("--ray-actors", args.ray_actors != 2),
                                     ("--ray-gpus", args.ray_gpus != 0), ("--ray-format", args.ray_format != "parquet"))
             if used]
    if given:
        raise ArgumentError(f"{', '.join(given)} go with --engine ray")
    if launched_processes() > 1:
        from ..serving.shards import predict_sharded

        result = predict_sharded(lambda: _load(args, spec, sharded=True), images, args.output,
                                 settings=spec.settings(), progress=not args.quiet, **pictures, **where)
        if result is None:  # not the main process: the main one prints the summary
            return 0
        if result.skipped_shards:
            print(f"{len(result.skipped_shards)} finished shard(s) of an earlier run reused", file=sys.stderr)
        return _predict_summary(args, labels, result)
    result = _load(args, spec).write(images, args.output, progress=not args.quiet, **pictures, **where)
    return _predict_summary(args, labels, result)


def _spec(args):
    """The PredictorSpec of the flags: base + category (PyTorch) or --onnx, checked before anything loads."""
    from ..inference.predictor import PredictorSpec

    if args.onnx:
        given = [flag for flag, value in (("--base", args.base), ("--category", args.category),
                                          ("--revision", args.revision), ("--output-size", args.output_size))
                 if value is not None] + (["--precision"] if args.precision != "fp32" else [])
        if given:
            raise ArgumentError(f"--onnx takes the category, base and map size from the exported model; drop "
                             f"{', '.join(given)}")
        return PredictorSpec(onnx=args.onnx, threshold=_threshold(args), batch_size=args.batch_size, tile=args.tile,
                             tile_overlap=args.tile_overlap, runtime=args.runtime or "onnxruntime")
    if args.runtime is not None:
        raise ArgumentError(f"--runtime {args.runtime} runs an exported model: pass --onnx MODEL.onnx")
    if not (args.base and args.category):
        raise ArgumentError("predict needs --base and --category (a PyTorch model), or --onnx (an exported one)")
    from ..hub.base_source import check_base

    check_base(args.base)
    return PredictorSpec(base=args.base, category=args.category, revision=args.revision, precision=args.precision,
                         threshold=_threshold(args), output_size=args.output_size, batch_size=args.batch_size,
                         memory_backbone=args.memory_backbone, tile=args.tile, tile_overlap=args.tile_overlap)


def _threshold(args):
    """--threshold, or the threshold of --sensitivity over the stored one (read from the adapter's category.json
    or the ONNX sidecar before the model loads, so every engine and a rerun's plan see one threshold)."""
    if args.sensitivity is None:
        return args.threshold
    from ..model.decisions import resolve_threshold

    if args.onnx:
        from ..export.sidecar import read_sidecar

        stored, source = read_sidecar(args.onnx).get("decision_threshold"), args.onnx
    else:
        from ..model.category_io import read_category_record, resolve_category_folder

        adapter = resolve_category_folder(args.category, revision=args.revision)
        stored = read_category_record(adapter.folder, adapter.name, adapter.repo_files, adapter.allowed_root).get(
            "decision_threshold")
        source = args.category
    if stored is None:
        raise ArgumentError(f"--sensitivity is relative to the stored decision threshold, but {source} stores none; "
                            "pass --threshold, or store one with `anomclip calibrate`")
    threshold = resolve_threshold(stored, sensitivity=args.sensitivity)
    print(f"sensitivity {args.sensitivity:g}: decision threshold {threshold:.4f} (stored {stored:.4f})",
          file=sys.stderr)
    return threshold


def _load(args, spec, sharded: bool = False):
    """The Predictor of this process, with the warnings a user needs (no threshold, auto precision's choice)."""
    from ..inference.predictor import PredictorSpec

    if spec.onnx is not None:
        predictor = spec.build()
        if predictor.threshold is None:
            print(f"warning: {args.onnx} stores no decision threshold; pass --threshold to get decisions"
                  + _no_overlays(args), file=sys.stderr)
        return predictor
    if sharded and args.device == "auto":
        from ..serving.shards import launch_state

        device = str(launch_state().device)  # each process of the launch on its own device
    else:
        device = str(resolve_device(args.device))
    predictor = PredictorSpec(**{**spec.__dict__, "device": device}).build()
    if predictor.threshold is None:
        print(f"warning: category {predictor.category!r} stores no decision threshold (it needs 2 or more "
              "references); pass --threshold to get decisions" + _no_overlays(args), file=sys.stderr)
    if args.save_maps and predictor.pixel_threshold is None:
        print(f"warning: category {predictor.category!r} stores no pixel threshold: --save-maps writes the maps, "
              "no masks", file=sys.stderr)
    if args.precision != "fp32":
        print(predictor.engine.precision.describe(), file=sys.stderr)  # resolved once, by the engine
    return predictor


def _no_overlays(args) -> str:
    return " (and --overlays anomalous draws no overlay without one)" if args.overlays == "anomalous" else ""


def _predict_summary(args, labels, result) -> int:
    for path, error in result.failures:
        print(f"skipped {path}: {error}", file=sys.stderr)
    print(result.summary())
    if labels is not None:
        import os

        from ..evaluation.labelled_predictions import METRICS_FILE, format_labelled_metrics, labelled_metrics
        from ..io.atomic_io import write_json

        metrics = labelled_metrics(result.scores, labels, result.threshold)
        print(format_labelled_metrics(metrics))
        write_json(os.path.join(args.output, METRICS_FILE), {"labels": args.labels, "sensitivity": args.sensitivity,
                                                             **metrics})
    return 0 if result.scores else 1
