"""Resumable runs: checkpoints of the prompt vectors, optimiser, scheduler, RNG and progress, without pickle.

Layout: `<job>/checkpoints/epoch_0010/` holds `tensors.safetensors` (prompt vectors, optimiser buffers, RNG
states) and `state.json` (optimiser settings, scheduler, progress, grad-scaler and the rest of the RNG states),
written and read by this module only, so resuming from a folder someone else made can never run code. Each
checkpoint is written atomically, so a kill during a save never leaves a half checkpoint that "latest" would
pick. The epoch counter lives in the checkpoint; the stage is derived from it, so a resumed run crosses the
stage boundary by itself.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..flags.precision import normalize_precision
from ..io.atomic_io import atomic_directory
from ..errors import CheckpointError

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^epoch_(\d+)$")
TENSORS_FILE, STATE_FILE, CHECKPOINT_FORMAT = "tensors.safetensors", "state.json", 1


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
            raise CheckpointError(f"the checkpoint belongs to a different run: {differing} differ "
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
        raise CheckpointError(f"checkpoint folder not found: {resume_from_checkpoint}")
    return resume_from_checkpoint


def clear_checkpoints(checkpoint_dir: str) -> None:
    """A fresh run drops the checkpoints of an abandoned earlier run, so "latest" can only mean this run."""
    for epoch, path in list_checkpoints(checkpoint_dir):
        logger.info("removing checkpoint of an earlier run: %s", path)
        shutil.rmtree(path)


def save_checkpoint(checkpoint_dir: str, epoch: int, *, vectors: torch.Tensor, optimizer, scheduler,
                    progress: TrainingProgress, scaler=None, limit: int = 0) -> str:
    """Write `checkpoint_dir/epoch_NNNN` atomically (safetensors + JSON); keep the newest `limit` (0: all)."""
    tensors = {"prompt_vectors": vectors.detach().cpu().contiguous()}
    optimizer_state = optimizer.state_dict()
    slots: dict = {}
    for index, values in optimizer_state["state"].items():
        slots[str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                slots[str(index)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{device}"] = state
    numpy_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(numpy_state[1].astype(np.int64))
    state = {
        "format": CHECKPOINT_FORMAT,
        "optimizer": {"state": slots, "param_groups": optimizer_state["param_groups"]},
        "scheduler": scheduler.state_dict(),
        "progress": progress.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "rng": {"python": _jsonable(random.getstate()),
                "numpy": [numpy_state[0], int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])]},
    }
    path = os.path.join(checkpoint_dir, f"epoch_{epoch:04d}")
    with atomic_directory(path) as staging:
        save_file(tensors, os.path.join(staging, TENSORS_FILE))
        with open(os.path.join(staging, STATE_FILE), "w", encoding="utf-8") as handle:
            json.dump(state, handle, allow_nan=False)
    if limit:
        for _, old in list_checkpoints(checkpoint_dir)[:-limit]:
            shutil.rmtree(old)
    return path


def load_checkpoint(path: str, *, vectors: torch.Tensor, optimizer, scheduler, progress: TrainingProgress,
                    scaler=None) -> None:
    """Restore what `save_checkpoint` wrote into the live objects; ValueError naming the file when the
    folder is not such a checkpoint (an accelerate pickle checkpoint is refused, never unpickled)."""
    tensor_file, state_file = os.path.join(path, TENSORS_FILE), os.path.join(path, STATE_FILE)
    if not (os.path.isfile(tensor_file) and os.path.isfile(state_file)):
        raise CheckpointError(f"{path} is not a checkpoint of this package: it needs {TENSORS_FILE} and {STATE_FILE} "
                         "(older pickle checkpoints are not read; start the run again)")
    try:
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
        tensors = load_file(tensor_file)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        progress.load_state_dict(state["progress"])  # first: a checkpoint of another run changes nothing
        stored = tensors["prompt_vectors"]
        if stored.shape != vectors.shape:
            raise CheckpointError(f"prompt vectors have shape {tuple(stored.shape)}, the run has {tuple(vectors.shape)}")
        optimizer_state = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
        for index, values in state["optimizer"]["state"].items():
            buffers = {key[len(f"optimizer.{index}."):]: value for key, value in tensors.items()
                       if key.startswith(f"optimizer.{index}.")}
            optimizer_state["state"][int(index)] = {**values, **buffers}
        with torch.no_grad():
            vectors.copy_(stored.to(vectors.device, vectors.dtype))
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        python_rng = state["rng"]["python"]
        random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
        kind, position, has_gauss, gauss = state["rng"]["numpy"]
        np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[f"rng.cuda.{d}"] for d in range(len(tensors)) if f"rng.cuda.{d}" in tensors]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    except (KeyError, TypeError, IndexError, json.JSONDecodeError, SafetensorError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged ({type(error).__name__}: {error})") from error
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise CheckpointError(f"checkpoint {path}: {error}") from error


def _jsonable(value):
    """Tuples (Python's RNG state) as lists, for JSON."""
    return [_jsonable(item) for item in value] if isinstance(value, (tuple, list)) else value
