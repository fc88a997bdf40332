"""`anomclip export`: one category as one ONNX graph plus its JSON sidecar."""

from __future__ import annotations

from ._common import add_command, add_memory_backbone_argument, add_tiling_arguments, base_kwargs


def add_parser(commands) -> None:
    export = add_command(
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
    add_memory_backbone_argument(export)
    add_tiling_arguments(export)
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    export.add_argument("--output-size", type=int, default=None, help="anomaly-map size (default: model input)")
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights and vision tower (for GPU runtimes)")
    precision.add_argument("--quantize", choices=["int8"], default=None,
                           help="dynamic int8 quantization of the matrix-product weights (smaller; drift printed)")
    export.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_onnx
    from ..model.modeling_anomclip import AnomCLIPModel

    model = AnomCLIPModel.from_base(args.base, **base_kwargs(args))
    state = model.load_category(args.category, revision=args.revision)
    from ..io.tiling import resolve_tiling

    # a tiled adapter exports a graph of tiles (the runtime stitches); flags may only repeat what fit used
    tiling = resolve_tiling(state.metadata.get("tiling"), args.tile, args.tile_overlap)
    exported = export_onnx(model, args.output, category=state.name, opset=args.opset, output_size=args.output_size,
                           fp16=args.fp16, quantize=args.quantize)
    print(exported.summary())
    if tiling is not None:
        print(f"tiled ({tiling.describe()}): the graph scores batches of tiles; the runtime cuts and stitches them")
    print(f"score with: anomclip predict --onnx {args.output} --images DIR --output OUT")
    return 0
