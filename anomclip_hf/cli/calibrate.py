"""`anomclip calibrate`: new stored thresholds for an existing adapter, from normal (and anomalous) images."""

from __future__ import annotations

from ..errors import ArgumentError
from ..flags.numeric import positive_float, positive_int
from ._common import add_command, add_memory_backbone_argument, base_kwargs, resolve_device


def add_parser(commands) -> None:
    calibrate = add_command(
        commands, "calibrate", "set an adapter's stored thresholds from labelled or normal images",
        "anomclip calibrate --base anomclip_demo/base --category runs/fit/adapter "
        "--normal-dir anomclip_demo/data/widget/test/good --abnormal-dir anomclip_demo/data/widget/test/blob",
        "anomclip calibrate --base B --category runs/fit/adapter --normal-dir good/ --abnormal-dir bad/ "
        "--target recall=0.95",
        "anomclip calibrate --base B --category runs/fit/adapter --normal-dir good/ --target false-alarm=0.01",
        "anomclip calibrate --base B --category runs/fit/adapter --normal-dir good/ --percentile 95 --factor 1.1",
        "anomclip calibrate --base B --category runs/fit/adapter --rule leave-one-out --factor 1.2",
        description="Score the folders with an existing adapter and write new decision (and pixel) thresholds into\n"
                    "it (category.json and its card, replaced atomically; the old thresholds stay in its\n"
                    "threshold_estimate.history with their rule). Rules: --target f1 (default with\n"
                    "--abnormal-dir), recall=R, false-alarm=A; from normal images alone --rule percentile\n"
                    "(default: 1.1 x the 95th percentile of their scores) or false-alarm=A; --rule leave-one-out\n"
                    "re-applies fit's rule to the references' stored scores with another --factor. Prints\n"
                    "precision, recall and false-alarm rate before and after. See docs/guides/thresholds.md.")
    calibrate.add_argument("--base", required=True, help="the CLIP or AnomCLIP base the category was made on")
    calibrate.add_argument("--category", required=True, help="the adapter folder to calibrate (written in place)")
    add_memory_backbone_argument(calibrate)
    calibrate.add_argument("--normal-dir", default=None,
                           help="normal images (sub-folders included), not the adapter's own references")
    calibrate.add_argument("--abnormal-dir", default=None,
                           help="anomalous images (sub-folder names = defect types)")
    calibrate.add_argument("--mask-dir", default=None, help="their masks (same relative path and name, or "
                           "NAME_mask): the pixel threshold becomes the pixel F1-max one")
    calibrate.add_argument("--target", default=None, metavar="f1|recall=R|false-alarm=A",
                           help="what the threshold must achieve on the images (default: f1 with --abnormal-dir)")
    calibrate.add_argument("--rule", choices=["percentile", "leave-one-out"], default=None,
                           help="a rule without a target (default without --abnormal-dir: percentile)")
    calibrate.add_argument("--percentile", type=positive_float, default=None,
                           help="percentile rule: Q of the normal scores, in (0, 100] (default: 95)")
    calibrate.add_argument("--factor", type=positive_float, default=None,
                           help="percentile / leave-one-out rule: the multiplier, >= 1 (default: 1.1)")
    calibrate.add_argument("--dry-run", action="store_true", help="print before/after, write nothing")
    calibrate.add_argument("--batch-size", type=positive_int, default=16)
    calibrate.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps ... (default: a GPU if there is one)")
    calibrate.add_argument("--no-progress", "--quiet", dest="progress_bar", action="store_false", default=True,
                           help="no progress bar")
    calibrate.set_defaults(func=run)


def choose_rule(args):
    """The CalibrationRule the flags name, checked against the folders given, before anything loads."""
    from ..evaluation.calibration import DEFAULT_FACTOR, DEFAULT_PERCENTILE, CalibrationRule, parse_target

    if args.target is not None and args.rule is not None:
        raise ArgumentError("--target and --rule are alternatives: give one")
    if args.target is None:
        name = args.rule or ("f1" if args.abnormal_dir is not None else "percentile" if args.normal_dir is not None
                             else None)
        if name is None:
            raise ArgumentError("calibrate needs images (--normal-dir, and --abnormal-dir for a target) or "
                             "--rule leave-one-out")
        if name == "f1":
            rule = CalibrationRule("f1")
        else:
            rule = CalibrationRule(name, percentile=(args.percentile or DEFAULT_PERCENTILE) if name == "percentile"
                                   else None, factor=DEFAULT_FACTOR if args.factor is None else args.factor)
    else:
        rule = parse_target(args.target)
    if rule.name not in ("percentile", "leave-one-out"):
        given = [flag for flag, value in (("--percentile", args.percentile), ("--factor", args.factor)) if value]
        if given:
            raise ArgumentError(f"{', '.join(given)} go with --rule percentile or leave-one-out, not --target")
    if rule.name == "leave-one-out" and args.percentile is not None:
        raise ArgumentError("--percentile goes with --rule percentile")
    if rule.needs_images and args.normal_dir is None:
        raise ArgumentError(f"--target/--rule {rule.name} needs --normal-dir (normal images)")
    if rule.needs_abnormal and args.abnormal_dir is None:
        raise ArgumentError(f"--target {rule.name} needs --abnormal-dir (anomalous images)")
    if not rule.needs_images and (args.normal_dir or args.abnormal_dir or args.mask_dir):
        raise ArgumentError("--rule leave-one-out uses the references' stored scores: drop the image folders")
    return rule


def run(args) -> int:
    import os

    rule = choose_rule(args)
    if not os.path.isdir(args.category):
        raise ArgumentError(f"--category {args.category}: folder does not exist (calibrate writes into a local "
                         "adapter folder; download a Hub adapter first)")
    from ..hub.base_source import check_base

    check_base(args.base)
    from ..evaluation.calibration import (
        calibrate_category,
        calibration_files,
        format_calibration,
        score_calibration_data,
    )
    from ..model.adapter_thresholds import write_thresholds
    from ..model.modeling_anomclip import AnomCLIPModel

    items = calibration_files(args.normal_dir, args.abnormal_dir, args.mask_dir) if rule.needs_images else None
    model = AnomCLIPModel.from_base(args.base, **base_kwargs(args)).to(resolve_device(args.device))
    name = model.load_category(args.category).name
    data = None if items is None else score_calibration_data(model, name, items, batch_size=args.batch_size,
                                                             progress=args.progress_bar)
    summary = {} if data is None else data.summary(args.normal_dir, args.abnormal_dir)
    result = calibrate_category(model, name, rule, data, summary)
    print(format_calibration(result))
    for warning in result.warnings:
        print(f"warning: {warning}")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    write_thresholds(args.category, model.get_category(name).metadata)
    print(f"wrote the new thresholds into {os.path.join(args.category, 'category.json')} (the old ones are in its "
          "threshold_estimate.history)")
    return 0
