"""TrainingConfig: every hyper-parameter of a PromptAD training run (docs/method/promptad.md, "Losses"), and its YAML presets.

Presets live in `training/presets/<name>.yaml` at the repository root (`paper`, `ref-code`); any YAML
path works too. A preset is a flat mapping of TrainingConfig fields; its `model:` mapping holds
AnomCLIPConfig settings that go to `AnomCLIPModel.from_clip(**model)` (or `from_base`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..flags.precision import normalize_precision
from ..errors import ConfigurationError

SCHEDULES = ("two_stage", "joint")
# training/presets/ of the repository, shipped in the package as anomclip_hf.presets (see pyproject.toml).
PRESET_DIR = Path(str(resources.files("anomclip_hf.presets")))
# Fields that must match for a checkpoint to continue a run (the rest only changes logging or bookkeeping).
RUN_DEFINING_FIELDS = ("schedule", "stage1_epochs", "stage2_epochs", "joint_epochs", "lr", "momentum",
                       "weight_decay", "min_lr", "eam_margin", "align_weight", "prompt_seed",
                       "precision", "model")


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run; defaults = the `paper` preset.

    schedule: "two_stage" (stage 1: L_ce + align_weight * L_align for `stage1_epochs`, stage 2 adds the
        margin term L_eam for `stage2_epochs`) or "joint" (reference code: all terms from step one,
        `joint_epochs`). One full-batch SGD step per epoch (all k shots), cosine decay of the learning rate
        from `lr` to `min_lr` over the whole run, stepped per epoch.
    prompt_seed: initialises the prompt vectors (the reference uses 111 for every run); the shot draw has
        its own seed, given per job.
    shots: k, the default number of normal reference images when a job does not say.
    precision: "fp32" | "bf16" | "fp16" | "auto": the frozen CLIP towers run under autocast in that dtype
        (auto: bf16 where the CPU/GPU runs it natively, else fp32; see `anomclip_hf.model.precision`); prompt
        vectors, optimizer state, losses and the memory bank stay float32. `mixed_precision` (no/bf16/fp16)
        is the older name of this setting and is still read.
    checkpoint_every: save an accelerate checkpoint every N epochs (0: never); checkpoint_limit keeps the
        newest N (0: all).
    trackers: "auto" (tensorboard when installed), "none", or a comma-separated list for `log_with`.
    model: AnomCLIPConfig settings for `from_clip` / `from_base`, e.g. {"anomaly_token_position": "before_class"}.
    preset: the preset the config came from (recorded in the training summary).
    """

    schedule: str = "two_stage"
    stage1_epochs: int = 50
    stage2_epochs: int = 50
    joint_epochs: int = 100
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_lr: float = 1e-5
    eam_margin: float = 0.0
    align_weight: float = 0.001
    prompt_seed: int = 111
    shots: int = 1
    precision: str = "fp32"
    checkpoint_every: int = 10
    checkpoint_limit: int = 2
    trackers: str = "auto"
    progress_bar: bool = True
    cpu: bool = False
    model: dict = field(default_factory=dict)
    preset: Optional[str] = None

    def __post_init__(self):
        # YAML 1.1 reads "1e-5" as a string and CLI values arrive as strings: coerce by the default's type.
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            default = spec.default if spec.default is not dataclasses.MISSING else None
            if isinstance(default, bool):
                setattr(self, spec.name, _as_bool(spec.name, value))
            elif isinstance(default, (int, float)):
                setattr(self, spec.name, _as_number(spec.name, value, type(default)))
        if self.schedule not in SCHEDULES:
            raise ConfigurationError(f"schedule={self.schedule!r}; expected one of {SCHEDULES}")
        self.precision = normalize_precision(self.precision)
        for name in ("stage1_epochs", "stage2_epochs", "joint_epochs", "checkpoint_every", "checkpoint_limit"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name}={getattr(self, name)}; expected a non-negative integer")
        if self.total_epochs < 1:
            raise ConfigurationError(f"schedule {self.schedule!r} has no epochs; set its epoch counts")
        if self.shots < 1:
            raise ConfigurationError(f"shots={self.shots}; expected a positive integer")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigurationError(f"lr={self.lr}, min_lr={self.min_lr}; expected 0 <= min_lr <= lr and lr > 0")
        if not isinstance(self.model, Mapping):
            raise ConfigurationError(f"model settings must be a mapping, got {type(self.model).__name__}")
        self.model = dict(self.model)
        validate_model_settings(self.model)

    # ------------------------------------------------------------------ schedule
    @property
    def total_epochs(self) -> int:
        return self.joint_epochs if self.schedule == "joint" else self.stage1_epochs + self.stage2_epochs

    def stage(self, epoch: int) -> str:
        """The stage of a 1-based epoch: "stage1" / "stage2" (two_stage) or "joint"; derived, never stored."""
        if not 1 <= epoch <= self.total_epochs:
            raise ConfigurationError(f"epoch {epoch} is outside 1..{self.total_epochs}")
        if self.schedule == "joint":
            return "joint"
        return "stage1" if epoch <= self.stage1_epochs else "stage2"

    def uses_margin(self, epoch: int) -> bool:
        """Whether the explicit anomaly margin L_eam is part of the loss at this epoch."""
        return self.stage(epoch) != "stage1"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainingConfig":
        names = {spec.name for spec in dataclasses.fields(cls)}
        values = dict(values)
        if "mixed_precision" in values:  # the older name of `precision` (presets and configs written before)
            legacy = values.pop("mixed_precision")
            values.setdefault("precision", legacy)
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigurationError(f"unknown training setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**dict(values))

    @classmethod
    def from_preset(cls, preset: str = "paper", overrides: Optional[Mapping[str, Any]] = None) -> "TrainingConfig":
        """A preset name (`paper`, `ref-code`) or YAML path, then `overrides` (their `model` merges key by key)."""
        path = resolve_preset(preset)
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"preset {path} must hold a mapping of training settings")
        values = dict(values)
        values.setdefault("preset", Path(path).stem)
        return cls.from_dict(values).with_overrides(overrides or {})

    def with_overrides(self, overrides: Mapping[str, Any]) -> "TrainingConfig":
        values = self.to_dict()
        for key, value in overrides.items():
            if key == "model":
                values["model"] = {**values["model"], **dict(value)}
            else:
                values[key] = value
        return type(self).from_dict(values)

    def with_epochs(self, epochs: int) -> "TrainingConfig":
        """Set the run length: joint -> all epochs; two_stage -> split in half (stage 1 gets the smaller half)."""
        epochs = int(epochs)
        if self.schedule == "joint":
            return self.with_overrides({"joint_epochs": epochs})
        return self.with_overrides({"stage1_epochs": epochs // 2, "stage2_epochs": epochs - epochs // 2})

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["model"] = dict(self.model)
        return values

    def run_fingerprint(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        values = self.to_dict()
        return {name: values[name] for name in RUN_DEFINING_FIELDS}


def _as_number(name: str, value, kind: type):
    if isinstance(value, bool):
        raise ConfigurationError(f"training setting {name}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"training setting {name}={value!r} is not a number") from None
    if not math.isfinite(number):  # nan passes every "<= 0" check and trains NaN prompt vectors
        raise ConfigurationError(f"training setting {name}={value!r} is not a finite number")
    if kind is int:
        if not number.is_integer():
            raise ConfigurationError(f"training setting {name}={value!r} is not an integer")
        return int(number)
    return number


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"training setting {name}={value!r} is not a boolean")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []


def resolve_preset(preset: str) -> str:
    """The YAML file of a preset name or path."""
    preset = os.fspath(preset)
    if os.path.isfile(preset):
        return preset
    if preset.endswith((".yaml", ".yml")) or os.sep in preset:
        raise ConfigurationError(f"preset file not found: {preset}")
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigurationError(f"unknown preset {preset!r}; available in {PRESET_DIR}: {available_presets()} "
                         "(or pass a YAML file path)")
    return str(path)


def _model_setting_names() -> set[str]:
    # Imported here, not at the top: the command line builds its parser from this module without torch.
    from ..model.configuration_anomclip import AnomCLIPConfig

    parameters = inspect.signature(AnomCLIPConfig.__init__).parameters
    internal = {"self", "kwargs", "clip_config", "prompt_token_ids", "base_model_name_or_path", "base_model_revision"}
    return {name for name in parameters if name not in internal}


def validate_model_settings(settings: Mapping[str, Any], clip_config=None) -> None:
    """Unknown names or values AnomCLIPConfig refuses raise ConfigurationError here, before any model is loaded."""
    from ..model.configuration_anomclip import AnomCLIPConfig

    unknown = sorted(set(settings) - _model_setting_names())
    if unknown:
        raise ConfigurationError(f"unknown model setting(s) {unknown}; valid: {sorted(_model_setting_names())}")
    AnomCLIPConfig(clip_config=clip_config, **dict(settings))
