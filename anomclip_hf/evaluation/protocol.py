"""`anomclip evaluate`: the protocol of docs/method/promptad.md, "Evaluation protocol", one resumable cell per (category, shots, seed).

Output folder:
    adapters/<dataset>/<category>/<k>shot/seed<s>/   training job folders (adapter/, summary.json, ...)
    cells/<category>_<k>shot_seed<s>.json             the metrics of one finished cell
    results.csv, results.json, results.md             the tables, rebuilt from every finished cell

A cell whose JSON exists (with the same settings) is not recomputed; an existing adapter is loaded
instead of trained. The number reported is the final epoch's (training never looks at the test split).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
from sklearn.metrics import precision_recall_fscore_support
from tqdm.auto import tqdm

from ..data import load_split, read_mask
from ..inference.batch_scoring import score_images, score_tiled_images
from ..io.atomic_io import write_json
from ..io.labels import pipeline_check_fields
from ..io.tiling import TilingSpec
from ..metrics import ImageMetricAccumulator, PixelMetricAccumulator
from ..model.modeling_anomclip import AnomCLIPModel
from ..model.precision import resolve_precision
from ..model.thresholds import decision
from ..training.config import TrainingConfig
from ..training.grid import Job, build_jobs
from ..training.inputs import add_reference_category, load_base_model
from ..training.job import ADAPTER_DIR, train_category
from .per_defect import per_defect_metrics
from .tables import write_results
from ..errors import ArgumentError

CELL_DIR = "cells"
PIXEL_METRICS = ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold")


@dataclass
class EvaluationSettings:
    """What makes two runs' cells comparable (a changed setting recomputes the cells)."""

    dataset: str
    resolution: int = 400  # pixel metrics at resolution x resolution (the reference evaluates at 400)
    pixel_mode: str = "exact"  # "exact" or "binned" (fixed thresholds, constant memory)
    num_bins: int = 2000
    train: bool = True  # False: memory + hand-written prompts, no prompt training
    training: dict = field(default_factory=dict)
    precision: str = "fp32"  # of the towers while scoring the test images (as requested: fp32/bf16/fp16/auto)
    mode: Optional[str] = None  # the scoring mode: None/"full" (memory + prompts), "memory" (the memory alone)
    memory_backbone: Optional[str] = None  # a DINOv2 memory, else the CLIP memory
    tiling: Optional[dict] = None  # --tile / --tile-overlap (`io.tiling.TilingSpec.record()`); None: whole images

    def __post_init__(self):
        if self.mode not in (None, "full", "memory", "text"):
            raise ArgumentError(f"mode={self.mode!r}; expected 'full', 'memory' or 'text'")
        if self.pixel_mode not in ("exact", "binned"):
            raise ArgumentError(f"pixel_mode={self.pixel_mode!r}; expected 'exact' or 'binned'")
        if self.resolution < 1:
            raise ArgumentError(f"resolution={self.resolution}; expected a positive size in pixels")
        if self.tiling is not None and not self.train:
            raise ArgumentError("--tile with --no-train: the tiled memory is built by the training job; drop --no-train")

    @property
    def tiling_spec(self) -> Optional[TilingSpec]:
        return None if self.tiling is None else TilingSpec(self.tiling["tile"], self.tiling["overlap"])


def _cell_path(output_dir: str, job: Job) -> str:
    return os.path.join(output_dir, CELL_DIR, f"{job.category}_{job.shots}shot_seed{job.seed}.json")


def _load_finished(path: str, settings: EvaluationSettings) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        cell = json.load(handle)
    # Cells written before the precision setting existed were scored in float32.
    defaults = {"precision": "fp32", "mode": None, "memory_backbone": None, "tiling": None}  # cells from before these settings
    stored = {**defaults, **cell["settings"]} if isinstance(cell.get("settings"), dict) else None
    return cell if stored == _as_json(asdict(settings)) else None


def _as_json(value):
    """What `value` reads back as from JSON (tuples become lists), so settings compare equal."""
    return json.loads(json.dumps(value))


def _prepare_category(model: AnomCLIPModel, job: Job, data_root: str, output_dir: str,
                      settings: EvaluationSettings, config: TrainingConfig) -> dict:
    """Make the cell's category active in `model`: load its adapter, train it, or (no training) build it."""
    job_dir = job.directory(os.path.join(output_dir, "adapters"))
    adapter = os.path.join(job_dir, ADAPTER_DIR)
    if os.path.isfile(os.path.join(adapter, "category.json")):
        model.load_category(adapter, name=job.category)
        return {"adapter": adapter, "source": "loaded"}
    if settings.train:
        summary = train_category(model, job.category, job_dir, dataset=job.dataset, data_root=data_root,
                                 shots=job.shots, seed=job.seed, config=config, tiling=settings.tiling_spec)
        return {"adapter": summary["adapter_dir"], "source": "trained", "train_wall_time_s": summary["train_wall_time_s"]}
    add_reference_category(model, job.dataset, data_root, job.category, job.shots, job.seed)
    model.save_category(adapter, job.category)
    return {"adapter": adapter, "source": "memory-only"}


def evaluate_cell(model: AnomCLIPModel, job: Job, data_root: str, settings: EvaluationSettings,
                  batch_size: int = 16, progress: bool = True) -> dict:
    """Score a category's whole test split batch by batch and return its metrics (maps never all in memory)."""
    test = load_split(job.dataset, data_root, job.category, "test")
    pixels = PixelMetricAccumulator(mode=settings.pixel_mode, num_bins=settings.num_bins)
    images = ImageMetricAccumulator()
    size = settings.resolution
    labels = np.array(test["label"])
    scores = np.zeros(len(labels), np.float64)
    # Labelled folders without a mask folder: no pixel metrics (NaN), rather than all-zero masks.
    has_masks = any(path is not None for path in test["mask_path"])
    began = time.perf_counter()
    description = f"{job.category} {job.shots}-shot seed {job.seed}"
    tiling = model.get_category(job.category).metadata.get("tiling")
    if tiling is None:
        batches = score_images(model, test["path"], batch_size=batch_size, output_size=size, category=job.category,
                               progress=progress, description=description, precision=settings.precision,
                               mode=settings.mode)
    else:  # full-resolution stitched maps, resized to the metric resolution as every other map
        batches = score_tiled_images(model, test["path"], TilingSpec(tiling["tile"], tiling["overlap"]),
                                     batch_size=batch_size, category=job.category, progress=progress,
                                     description=description, autocast_dtype=resolve_precision(settings.precision,
                                                                                               model.device),
                                     mode=settings.mode)
    for batch in batches:
        if has_masks:
            masks = np.stack([read_mask(test[i], size=(size, size)) for i in batch.indices])
            pixels.update(_at_resolution(batch.anomaly_maps, size), masks)
        images.update(batch.image_scores, labels[batch.indices])
        scores[np.asarray(batch.indices)] = batch.image_scores
    stored = model.get_category(job.category).metadata.get("decision_threshold")
    # Without masks the pixel metrics do not exist: None (null in JSON, left out of the tables), never NaN.
    pixel_metrics = pixels.compute() if has_masks else dict.fromkeys(PIXEL_METRICS)
    return {**images.compute(), **pixel_metrics, **stored_threshold_metrics(scores, labels, stored),
            "per_defect": per_defect_metrics(scores, test["defect_type"], stored),
            "test_images": len(test), "eval_wall_time_s": round(time.perf_counter() - began, 3)}


def _at_resolution(maps, size: int) -> np.ndarray:
    """(B, size, size) maps: bilinear resizing of maps of any size (tiled maps are at their image's size)."""
    if isinstance(maps, np.ndarray) and maps.shape[1:] == (size, size):
        return maps
    import torch
    import torch.nn.functional as F

    return np.stack([F.interpolate(torch.from_numpy(np.asarray(m, np.float32))[None, None], size=(size, size),
                                   mode="bilinear", align_corners=False)[0, 0].numpy() for m in maps])


def stored_threshold_metrics(scores: np.ndarray, labels, threshold: Optional[float]) -> dict:
    """How the category's own threshold (leave-one-out over its references) does on the labelled test split,
    next to the best possible one (image_f1_threshold): its F1, precision and recall."""
    if threshold is None:
        return {"stored_threshold": None}
    predicted = [decision(float(s), threshold) == "anomalous" for s in scores]
    precision, recall, f1, _ = precision_recall_fscore_support(np.asarray(labels).astype(bool), predicted,
                                                               average="binary", zero_division=0)
    return {"stored_threshold": float(threshold), "stored_threshold_f1": float(f1),
            "stored_threshold_precision": float(precision), "stored_threshold_recall": float(recall)}


def run_evaluation(base: Union[str, os.PathLike, AnomCLIPModel], dataset: str, data_root: str, output_dir: str,
                   categories: Union[str, Sequence[str]] = "all", shots: Sequence[int] = (1, 2, 4),
                   seeds: Sequence[int] = (0, 1, 2, 3, 4), config: Optional[TrainingConfig] = None,
                   resolution: int = 400, pixel_mode: str = "exact", train: bool = True, batch_size: int = 16,
                   progress: bool = True, mode: Optional[str] = None, tiling: Optional[TilingSpec] = None) -> dict:
    """Run (or resume) the protocol and write results.csv / results.json / results.md; return the summary.

    mode: "memory" scores with the visual memory alone (the CLIP memory, or the DINOv2 one when the config's
    model settings name a `memory_backbone`); default: memory + prompts (fused)."""
    config = config or TrainingConfig()
    settings = EvaluationSettings(dataset=str(dataset).lower(), resolution=int(resolution), pixel_mode=pixel_mode,
                                  train=train, training=config.run_fingerprint() if train else {},
                                  precision=config.precision, mode=mode,
                                  memory_backbone=config.model.get("memory_backbone"),
                                  tiling=None if tiling is None else tiling.record())
    jobs = build_jobs(dataset, data_root, categories, shots, seeds)
    model = base if isinstance(base, AnomCLIPModel) else None
    cells = []
    for job in tqdm(jobs, desc="evaluate", unit="cell", disable=not progress):
        path = _cell_path(output_dir, job)
        cell = _load_finished(path, settings)
        if cell is None:
            if model is None:
                model = load_base_model(base, config.model)  # loaded only if some cell needs work
            origin = _prepare_category(model, job, data_root, output_dir, settings, config)
            metrics = evaluate_cell(model, job, data_root, settings, batch_size=batch_size, progress=progress)
            # The adapter's model card then carries its measured results (model-index).
            model.get_category(job.category).metadata["evaluation"] = {
                "dataset": job.dataset, "resolution": settings.resolution, "test_images": metrics["test_images"],
                "metrics": {key: metrics[key] for key in ("image_auroc", "pixel_auroc", "aupro")}}
            model.save_category(origin["adapter"], job.category)
            cell = {**asdict(job), **origin, "metrics": metrics, "settings": _as_json(asdict(settings)),
                    **pipeline_check_fields(model)}
            write_json(path, cell)  # atomic: a killed run never leaves a half-written cell
            model.remove_category(job.category)
        else:
            cell["reused"] = True
        cells.append(cell)
    base_name = base.config.base_model_name_or_path if isinstance(base, AnomCLIPModel) else os.fspath(base)
    return write_results(output_dir, cells, settings, base=base_name)
