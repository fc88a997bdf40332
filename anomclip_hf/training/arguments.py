"""Command-line flags for every TrainingConfig field, shared by training/train.py and `anomclip fit`.

Every flag defaults to None, so only what the user types overrides the preset. Spelling: `--weight-decay`
or `--weight_decay`; model settings as `--model-setting KEY=VALUE` (VALUE parsed as YAML).
`add_hub_arguments`: --push-to-hub, --hub-repo-id (a repo id or a pattern), --hub-org, --hub-private, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import TYPE_CHECKING, Any, Optional

import yaml

from ..flags.numeric import finite_float, nonnegative_float, nonnegative_int
from ..flags.precision import add_precision_argument
from .config import SCHEDULES, TrainingConfig
from ..errors import ConfigurationError

if TYPE_CHECKING:  # the Hub client loads only when a run pushes
    from ..hub.push import HubTarget

# Fields a job or grid defines itself (shots per job) or that get their own flag below.
_SKIPPED = {"model", "shots", "preset", "progress_bar", "cpu", "precision"}
_CHOICES = {"schedule": SCHEDULES}
DEFAULT_HUB_PATTERN = "{org}/anomclip-{dataset}-{category}-{shots}shot"


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("training hyper-parameters (override the preset)")
    group.add_argument("--preset", default="paper", help="paper | ref-code | a YAML file (default: %(default)s)")
    group.add_argument("--epochs", type=nonnegative_int, default=None,
                       help="run length: joint -> all epochs, two_stage -> split in half between the stages")
    for spec in dataclasses.fields(TrainingConfig):
        if spec.name in _SKIPPED:
            continue
        default = spec.default
        kind = _flag_type(spec.name, default)
        flags = [f"--{spec.name.replace('_', '-')}"] + ([f"--{spec.name}"] if "_" in spec.name else [])
        choices = _CHOICES.get(spec.name)
        group.add_argument(*flags, dest=spec.name, type=kind, default=None, choices=choices,
                           help=f"(without preset: {default})")
    add_precision_argument(group, default=None)  # the flag predict shares
    group.add_argument("--model-setting", "--model_setting", dest="model_settings", action="append", default=[],
                       metavar="KEY=VALUE", help="an AnomCLIPConfig setting, e.g. anomaly_token_position=before_class")
    group.add_argument("--no-progress", dest="progress_bar", action="store_false", default=None,
                       help="no tqdm progress bar")
    group.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even if a GPU is visible")
    return parser


def _flag_type(name: str, default):
    """The argparse type of a TrainingConfig field: the shared numeric rules, by the default's type."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return str
    if isinstance(default, int):
        return nonnegative_int
    return finite_float if name == "eam_margin" else nonnegative_float


def add_hub_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--push-to-hub and where to: one repo id, or a pattern for runs over several jobs."""
    group = parser.add_argument_group("pushing each trained adapter to the Hugging Face Hub")
    group.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", action="store_true",
                       help="push each job's adapter (with its model card) to its own Hub repo")
    group.add_argument("--hub-repo-id", "--hub_repo_id", dest="hub_repo_id", default=None,
                       help="repo id, or a pattern with {org} {dataset} {category} {shots} {seed} for several jobs "
                            f"(default with --push-to-hub: {DEFAULT_HUB_PATTERN})")
    group.add_argument("--hub-org", "--hub_org", dest="hub_org", default=None,
                       help="user or organisation that {org} stands for")
    group.add_argument("--hub-private", "--hub_private", dest="hub_private", action="store_true",
                       help="create the repos private")
    group.add_argument("--hub-revision", "--hub_revision", dest="hub_revision", default=None,
                       help="branch to push to (default: main)")
    return parser


def hub_target_from_args(args: argparse.Namespace) -> Optional[HubTarget]:
    """The push target of --push-to-hub (None without it); the token comes from HF_TOKEN or `hf auth login`."""
    if not getattr(args, "push_to_hub", False):
        if getattr(args, "hub_repo_id", None):
            raise ConfigurationError("--hub-repo-id is given without --push-to-hub")
        return None
    from ..hub.push import HubTarget

    return HubTarget(repo_id=args.hub_repo_id or DEFAULT_HUB_PATTERN, org=args.hub_org,
                     private=True if args.hub_private else None, revision=args.hub_revision)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The preset, then --epochs, then the individual flags (so --stage1-epochs beats --epochs)."""
    config = TrainingConfig.from_preset(args.preset)
    if getattr(args, "epochs", None) is not None:
        config = config.with_epochs(args.epochs)
    overrides: dict[str, Any] = {}
    for spec in dataclasses.fields(TrainingConfig):
        value = getattr(args, spec.name, None)
        if value is not None and spec.name not in ("model", "shots", "preset"):
            overrides[spec.name] = value
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if getattr(args, "precision", None) is None and launcher in ("bf16", "fp16"):
        overrides["precision"] = launcher  # `accelerate launch --mixed_precision bf16` applies too
    model = dict(_parse_setting(item) for item in getattr(args, "model_settings", []) or [])
    if model:
        overrides["model"] = model
    return config.with_overrides(overrides)


def _parse_setting(item: str) -> tuple[str, Optional[Any]]:
    if "=" not in item:
        raise ConfigurationError(f"--model-setting {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    return key.strip(), yaml.safe_load(value)
