"""One training job = one (dataset, category, shots, seed): references -> prompt training -> adapter folder.

Job folder (`output_dir`):
    adapter/          the category adapter (model.save_category, atomic: it exists only when the job finished)
    summary.json      the job summary (also gathered into the grid's summary.json); written after the adapter
                      and removed when a new run of the job starts, so it never describes another adapter
    checkpoints/      accelerate checkpoints, epoch_NNNN/
    logs/             per-epoch loss curves of the trackers (tensorboard when installed; main process only)

Decision threshold: estimated after training by leave-one-out over the k shots (`thresholds.py`; the
shots' own scores are 0, they are the memory bank), None for a single shot. `anomclip evaluate` also
reports the F1-max threshold of labelled test data; `predict --threshold` overrides either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from typing import Optional, Sequence, Union

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import is_tensorboard_available

from ..hub.push import HubTarget
from ..io.atomic_io import write_json
from ..io.labels import pipeline_check_fields
from ..io.tiling import TilingSpec
from ..model.memory_bank import encode_references
from ..model.thresholds import record_thresholds
from ..model.tiling import (
    add_tiled_category,
    encode_tiled_references,
    estimate_tiled_thresholds,
    reference_tile_grid,
)
from ..model.modeling_anomclip import AnomCLIPModel
from ..model.precision import PrecisionChoice, resolve_precision
from ..model.processing_anomclip import AnomCLIPProcessor
from ..model.publishing import upload_category_folder
from .checkpointing import resolve_resume
from .config import TrainingConfig
from .inputs import (
    check_model_settings,
    load_base_model,
    read_references,
    select_references,
    try_estimate_thresholds,
)
from .loop import EpochCallback, FitResult, fit_prompts
from .step import ShotFeatures

ADAPTER_DIR, SUMMARY_FILE, CHECKPOINT_DIR, TENSORBOARD_RUN = "adapter", "summary.json", "checkpoints", "logs"


def train_category(
    base: Union[str, os.PathLike, AnomCLIPModel],
    category: str,
    output_dir: str,
    *,
    dataset: str = "mvtec",
    data_root: Optional[str] = None,
    shots: Union[int, str, None] = None,
    seed: int = 0,
    config: Optional[TrainingConfig] = None,
    class_name: Optional[str] = None,
    phrases: Optional[Sequence[str]] = None,
    resume_from_checkpoint: Optional[str] = None,
    callbacks: Sequence[EpochCallback] = (),
    adapter_dir: Optional[str] = None,
    push_to_hub: Optional[HubTarget] = None,
    memory_size: Optional[int] = None,
    coreset_ratio: Optional[float] = None,
    tiling: Optional[TilingSpec] = None,
    train: bool = True,
) -> dict:
    """Train the prompts of one category on k normal shots and write its adapter; returns the job summary.

    base: an AnomCLIP base / CLIP id or folder (loaded with config.model settings), or a loaded
        AnomCLIPModel, which keeps the trained category afterwards (its CLIP weights stay untouched).
    dataset, data_root, category: as `anomclip_hf.data.load_split` ("mvtec", "visa" or "folder").
    shots, seed: k (default config.shots; "all": every normal image) and the seed of the shot draw.
    resume_from_checkpoint: "latest" (this job's newest checkpoint, or a fresh start if none) or a folder.
    push_to_hub: push the adapter to the Hub repo this target names for the job (after it is saved).
    adapter_dir: where the adapter goes (default `output_dir/adapter`).
    phrases: anomaly phrases added to the category's hand-written ones ("{}" stands for the class name).
    memory_size, coreset_ratio: the visual memory as a greedy coreset of that many patch rows (that fraction)
        per memory layer; default: exact up to 16384 rows, a coreset of 16384 above (`memory.policy`). References
        are encoded in batches; a large set streams from its files.
    tiling: score at native resolution with tiles (`io.tiling`): the references are cut into tiles, the memory
        holds their patches, the prompts train on the tiles and the leave-one-out thresholds are for whole
        images; recorded in the adapter so predict tiles alike. None: whole images resized to the tower.
    train: False builds the memory and the thresholds with the hand-written prompts and trains nothing (as
        `fit --epochs 0` / `--no-train`; the run length of `config` is then ignored).
    """
    config = config or TrainingConfig()
    references = select_references(dataset, data_root, category, config.shots if shots is None else shots, seed)
    shots = len(references)
    # The repo id is checked before anything is trained or written.
    hub_repo_id = None if push_to_hub is None else push_to_hub.repo_id_for(dataset, category, shots, int(seed))
    images = read_references(references)
    if isinstance(base, AnomCLIPModel):
        check_model_settings(base, config.model)
        model = base
    else:
        model = load_base_model(base, config.model)
    grid = None if tiling is None else reference_tile_grid(model, images[0], tiling)
    # A bad memory size fails here, before any forward; True: the memory features wait on disk (a coreset).
    memory_images = shots if grid is None else shots * grid.count  # a tiled memory's images are the tiles
    spill = model.memory_plan(memory_images, memory_size, coreset_ratio) is not None
    checkpoint_dir = os.path.join(output_dir, CHECKPOINT_DIR)
    resume_from = resolve_resume(resume_from_checkpoint, checkpoint_dir)
    adapter_dir = adapter_dir or os.path.join(output_dir, ADAPTER_DIR)
    reference_files = [os.path.relpath(path, data_root) for path in references]
    job = {"dataset": dataset, "category": category, "shots": shots, "seed": int(seed)}
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, SUMMARY_FILE))  # it describes the adapter of an earlier run

    began = time.perf_counter()
    device = PartialState(cpu=config.cpu).device
    precision = resolve_precision(config.precision, device, model)
    accelerator = _job_accelerator(config, output_dir, device, precision)
    model.to(accelerator.device)
    # Every long phase shows progress: a bar on a terminal, one line with its duration elsewhere (--quiet: none).
    progress = config.progress_bar is not False
    tiles = None
    if grid is not None:  # the tiles of every reference: memory, training features and thresholds
        tiles = encode_tiled_references(model, images, tiling, names=reference_files, spill=spill, progress=progress)
        vision = tiles.features
        state = add_tiled_category(model, category, tiles, tiling, class_name=class_name, phrases=phrases,
                                   learned_prompts=train, seed=config.prompt_seed, memory_size=memory_size,
                                   coreset_ratio=coreset_ratio)
    else:
        if not isinstance(images[0], str):  # a few references, decoded: one batch, as before streaming existed
            images = AnomCLIPProcessor.from_model(model)(images=images)  # pixel_values (+ memory_pixel_values)
        # One float32 forward of the k shots serves the memory bank and the training features alike (the
        # precision setting applies to the text tower of the epochs: run once, the shots are worth the float32).
        vision = encode_references(model, images, spill=spill, progress=progress)
        state = model.add_category(category, reference_images=vision, class_name=class_name, phrases=phrases,
                                   learned_prompts=train, seed=config.prompt_seed, memory_size=memory_size,
                                   coreset_ratio=coreset_ratio, progress=progress)
    if train:
        result = _fit_tracked(model, category, ShotFeatures.from_vision(vision), config, accelerator, job,
                              checkpoint_dir=checkpoint_dir, resume_from=resume_from, callbacks=callbacks,
                              fingerprint={**config.run_fingerprint(), **job, "reference_files": reference_files,
                                           **({} if tiling is None else {"tiling": tiling.record()})},
                              description=f"{dataset}/{category} {shots}-shot seed {seed}", precision=precision)
    else:
        result = FitResult(history=[], epochs=0, resumed_from=None, start_epoch=0, wall_time_s=0.0)

    state.metadata.update(seed=config.prompt_seed, reference_files=reference_files,
                          training=_training_record(config, result, dataset, seed, precision))
    if tiles is None:
        thresholds = try_estimate_thresholds(model, vision, category, progress=progress)
    elif tiles.references >= 2:  # one threshold for a whole image, from whole tiled references
        thresholds = estimate_tiled_thresholds(model, tiles, category, progress=progress)
    else:
        thresholds = None
        record_thresholds(state.metadata, None)
    summary = {**job, "status": "trained", "class_name": state.class_name, "job_dir": output_dir,
               "adapter_dir": adapter_dir, "reference_files": reference_files, "prompt_seed": config.prompt_seed,
               "schedule": config.schedule, "epochs": result.epochs, "final_losses": result.final_losses(),
               "train_wall_time_s": round(result.wall_time_s, 3),
               "job_wall_time_s": round(time.perf_counter() - began, 3),
               "decision_threshold": None if thresholds is None else thresholds.image,
               "resumed_from": result.resumed_from, "memory": state.coreset or "exact",
               "tiling": state.metadata.get("tiling"),
               **pipeline_check_fields(model)}
    settings = run_settings(config, dataset, category, shots, seed)
    summary.update(run_settings=settings, run_hash=settings_hash(settings))
    model.save_category(adapter_dir, category)
    # Last: adapter + summary mark a finished job; a kill in between leaves no summary, so the job reruns.
    write_json(os.path.join(output_dir, SUMMARY_FILE), {**summary, "history": result.history})
    if push_to_hub is not None:
        summary.update(push_job_adapter(output_dir, adapter_dir, hub_repo_id, push_to_hub))
    return summary


def _fit_tracked(model, category, features, config, accelerator, job, **fit_options):
    """`fit_prompts` with the job's trackers started, and finished whatever happens."""
    try:
        _init_trackers(accelerator, config, job)
        return fit_prompts(model, category, features, config, accelerator, **fit_options)
    finally:
        # Not accelerator.end_training(): it also destroys the process group the other jobs still need.
        for tracker in accelerator.trackers:
            tracker.finish()


def _training_record(config: TrainingConfig, result, dataset: str, seed: int, precision) -> dict:
    """category.json "training": how the prompts were trained."""
    return {
        "config": config.to_dict(), "preset": config.preset, "schedule": config.schedule,
        "epochs": result.epochs, "stage_epochs": _stage_epochs(config) if result.epochs else {},
        "final_losses": result.final_losses(), "wall_time_s": round(result.wall_time_s, 3),
        "dataset": dataset, "shot_seed": int(seed), "prompt_seed": config.prompt_seed,
        "precision": precision.precision, "precision_reason": precision.reason, "resumed_from": result.resumed_from,
    }


def run_settings(config: TrainingConfig, dataset: str, category: str, shots: int, seed: int) -> dict:
    """What defines a job's result: the run-defining training settings and the job itself."""
    return {**config.run_fingerprint(), "dataset": dataset, "category": category, "shots": int(shots),
            "seed": int(seed)}


def settings_hash(settings: dict) -> str:
    """A stable hash of `run_settings` (sorted-key JSON), stored in summary.json to detect a changed rerun."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def push_job_adapter(job_dir: str, adapter_dir: str, repo_id: str, target: HubTarget) -> dict:
    """Push a finished job's adapter and record the commit in its summary.json (so a rerun does not push
    it again); returns {"hub_repo_id", "hub_commit"}."""
    commit = upload_category_folder(adapter_dir, repo_id, **target.upload_options())
    pushed = {"hub_repo_id": repo_id, "hub_commit": commit.oid}
    path = os.path.join(job_dir, SUMMARY_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        write_json(path, {**summary, **pushed})
    return pushed


def _job_accelerator(config: TrainingConfig, output_dir: str, device: torch.device,
                     precision: PrecisionChoice) -> Accelerator:
    """A fresh Accelerator per job: its own project folder, trackers and checkpoint registrations.

    The towers' autocast is ours (`precision`); accelerate only hears of float16 on a GPU, to scale the loss
    so that small gradients do not underflow."""
    trackers = _trackers(config.trackers)
    scaled = "fp16" if precision.precision == "fp16" and device.type == "cuda" else "no"
    return Accelerator(cpu=config.cpu, mixed_precision=scaled, log_with=trackers or None, project_dir=output_dir)


def _trackers(setting: str) -> list[str]:
    if setting == "none":
        return []
    if setting == "auto":
        return ["tensorboard"] if is_tensorboard_available() else []
    return [name.strip() for name in setting.split(",") if name.strip()]


def _init_trackers(accelerator: Accelerator, config: TrainingConfig, job: dict) -> None:
    # Tracker configs take scalars only; flatten the model settings and stringify the rest.
    hparams = {**job, **{k: v for k, v in config.to_dict().items() if k != "model"},
               **{f"model.{k}": v for k, v in config.model.items()}}
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
    accelerator.init_trackers(TENSORBOARD_RUN, config=hparams)


def _stage_epochs(config: TrainingConfig) -> dict:
    if config.schedule == "joint":
        return {"joint": config.joint_epochs}
    return {"stage1": config.stage1_epochs, "stage2": config.stage2_epochs}
