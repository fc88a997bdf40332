"""`anomclip evaluate`: the few-shot benchmark protocol (results.csv/json/md)."""

from __future__ import annotations

import os

from ..flags.numeric import nonnegative_int, positive_int
from ._common import add_command, add_memory_backbone_argument, add_tiling_arguments, with_memory_backbone
from ..errors import ArgumentError


def add_parser(commands) -> None:
    from ..training import add_training_arguments

    evaluate = add_command(
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
    add_memory_backbone_argument(evaluate)
    evaluate.add_argument("--mode", choices=["full", "memory", "text"], default=None,
                          help="score with memory + prompts (full, the default), the visual memory alone (memory: "
                               "the CLIP memory, or the DINOv2 one with --memory-backbone) or the prompts alone")
    add_tiling_arguments(evaluate, recorded=False)
    add_training_arguments(evaluate)
    evaluate.set_defaults(func=run)


def run(args) -> int:
    from ..hub.base_source import check_base

    check_base(args.base)
    data_root = _evaluation_data(args)
    from ..evaluation import run_evaluation
    from ..io.tiling import tiling_spec
    from ..training import config_from_args

    results = run_evaluation(args.base, args.dataset, data_root, args.output, categories=args.categories,
                             shots=args.shots, seeds=args.seeds,
                             config=with_memory_backbone(config_from_args(args), args.memory_backbone),
                             resolution=args.resolution, pixel_mode=args.pixel_mode, train=not args.no_train,
                             batch_size=args.batch_size, mode=args.mode, progress=args.progress_bar is not False,
                             tiling=tiling_spec(args.tile, args.tile_overlap))
    with open(os.path.join(args.output, "results.md"), encoding="utf-8") as handle:
        print(handle.read())
    print(f"{len(results['cells'])} cells; results.csv, results.json and results.md in {args.output}")
    return 0


def _evaluation_data(args):
    """--data-root, or for --dataset folder the labelled folders (--normal-dir, --abnormal-dir, --mask-dir)."""
    folders = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir")
    if args.dataset == "folder" and args.normal_dir is not None:
        if args.abnormal_dir is None:
            raise ArgumentError("--dataset folder --normal-dir needs --abnormal-dir (the anomalous test images)")
        for name in folders:
            value = getattr(args, name)
            if value is not None and not os.path.isdir(value):
                raise ArgumentError(f"--{name.replace('_', '-')} {value}: folder does not exist")
        from ..data.labelled_folder import LabelledFolder

        return LabelledFolder(args.normal_dir, args.abnormal_dir, mask_dir=args.mask_dir,
                              normal_test_dir=args.normal_test_dir,
                              category=None if args.categories == ["all"] else args.categories[0])
    given = [f"--{name.replace('_', '-')}" for name in folders if getattr(args, name) is not None]
    if given:
        raise ArgumentError(f"{', '.join(given)} go with --dataset folder --normal-dir DIR --abnormal-dir DIR")
    if args.data_root is None:
        raise ArgumentError(f"--dataset {args.dataset} needs --data-root"
                         + (" (or --normal-dir and --abnormal-dir)" if args.dataset == "folder" else ""))
    return args.data_root
