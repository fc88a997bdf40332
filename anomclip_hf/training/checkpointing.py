"""Resumable runs: accelerate checkpoints of the prompt vectors, optimiser, scheduler and progress.

Layout: `<job>/checkpoints/epoch_0010/` (one `accelerator.save_state` folder each, written atomically so a
kill during a save never leaves a half checkpoint that "latest" would pick). The epoch counter lives in
the checkpoint; the stage is derived from it, so a resumed run crosses the stage boundary by itself.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate.utils import OPTIMIZER_NAME

from ..atomic_io import atomic_directory
from ..precision import normalize_precision

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^epoch_(\d+)$")


class PromptVectors:
    """The trainable prompt tensor as a checkpointable object (accelerate needs state_dict/load_state_dict)."""

    def __init__(self, parameter: torch.nn.Parameter):
        self.parameter = parameter

    def state_dict(self) -> dict:
        return {"vectors": self.parameter.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.parameter.copy_(state["vectors"].to(self.parameter.device, self.parameter.dtype))


@dataclass
class TrainingProgress:
    """Epochs done, per-epoch logs, cumulative wall time and what defines the run (checked on resume)."""

    fingerprint: dict
    epoch: int = 0
    history: list = field(default_factory=list)
    wall_time_s: float = 0.0

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "epoch": self.epoch, "history": list(self.history),
                "wall_time_s": self.wall_time_s}

    def load_state_dict(self, state: dict) -> None:
        state = {**state, "fingerprint": dict(state["fingerprint"])}
        if "mixed_precision" in state["fingerprint"]:  # written before `precision` replaced it
            legacy = state["fingerprint"].pop("mixed_precision")
            state["fingerprint"].setdefault("precision", normalize_precision(legacy))
        if state["fingerprint"] != self.fingerprint:
            differing = sorted(key for key in set(state["fingerprint"]) | set(self.fingerprint)
                               if state["fingerprint"].get(key) != self.fingerprint.get(key))
            raise ValueError(f"the checkpoint belongs to a different run: {differing} differ "
                             f"(checkpoint: {[state['fingerprint'].get(k) for k in differing]}, "
                             f"now: {[self.fingerprint.get(k) for k in differing]})")
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.wall_time_s = float(state["wall_time_s"])


def list_checkpoints(checkpoint_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of the complete checkpoints in `checkpoint_dir`, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        match = CHECKPOINT_PATTERN.match(name)
        if match and os.path.isdir(os.path.join(checkpoint_dir, name)):
            found.append((int(match.group(1)), os.path.join(checkpoint_dir, name)))
    return sorted(found)


def resolve_resume(resume_from_checkpoint: Optional[str], checkpoint_dir: str) -> Optional[str]:
    """"latest" -> the newest checkpoint of this job (None when there is none yet: a fresh start);
    a path -> that folder, which must exist."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(checkpoint_dir)
        return checkpoints[-1][1] if checkpoints else None
    if not os.path.isdir(resume_from_checkpoint):
        raise ValueError(f"checkpoint folder not found: {resume_from_checkpoint}")
    return resume_from_checkpoint


def clear_checkpoints(checkpoint_dir: str) -> None:
    """A fresh run drops the checkpoints of an abandoned earlier run, so "latest" can only mean this run."""
    for epoch, path in list_checkpoints(checkpoint_dir):
        logger.info("removing checkpoint of an earlier run: %s", path)
        shutil.rmtree(path)


def save_checkpoint(accelerator, checkpoint_dir: str, epoch: int, optimizer, objects: list, limit: int = 0) -> str:
    """`accelerator.save_state` into `checkpoint_dir/epoch_NNNN`, atomically; keep the newest `limit` (0: all)."""
    path = os.path.join(checkpoint_dir, f"epoch_{epoch:04d}")
    with atomic_directory(path) as staging:
        accelerator.save_state(staging)
        _write_main_only_states(accelerator, staging, optimizer, objects)
    if limit:
        for _, old in list_checkpoints(checkpoint_dir)[:-limit]:
            shutil.rmtree(old)
    return path


def _write_main_only_states(accelerator, folder: str, optimizer, objects: list) -> None:
    """accelerate writes optimizer and registered-object states on the global main process only (it assumes
    one run shared by all processes). Jobs here are independent, so a job on another rank writes them itself,
    under accelerate's own file names, and `load_state` reads them back unchanged."""
    if accelerator.is_main_process:
        return
    torch.save(optimizer.state_dict(), os.path.join(folder, f"{OPTIMIZER_NAME}.bin"))
    for index, obj in enumerate(objects):
        torch.save(obj.state_dict(), os.path.join(folder, f"custom_checkpoint_{index}.pkl"))
