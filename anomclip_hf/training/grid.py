"""A grid of independent jobs (categories x shots x seeds), shared out over the processes of a launch.

Under `accelerate launch --num_processes N` each process takes its share of the jobs
(`split_between_processes`) and trains them one after another on its own device; the main process
gathers every job summary (`gather_object`) into `<output_dir>/summary.json`. No DDP: the jobs share
nothing. A finished job (adapter and summary.json) is skipped, so an interrupted grid is restarted by running
the same command again (add `--resume_from_checkpoint latest` to continue unfinished jobs mid-run); a finished
job whose stored settings differ from this run's is refused (recorded as failed, its adapter kept). A fatal
error in one process (a bad base, on_error="raise") still reaches the gather, then every process raises.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

from accelerate import PartialState
from accelerate.utils import gather_object

from ..data import list_categories
from ..data.loading import DATASETS
from ..errors import AnomCLIPError, ConfigurationError
from ..hub.push import HubTarget
from ..io.atomic_io import write_json
from ..model.modeling_anomclip import AnomCLIPModel
from .config import TrainingConfig
from .inputs import load_base_model
from .job import (
    ADAPTER_DIR,
    SUMMARY_FILE,
    push_job_adapter,
    run_settings,
    settings_hash,
    train_category,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    dataset: str
    category: str
    shots: int
    seed: int

    def directory(self, output_dir: str) -> str:
        return os.path.join(output_dir, self.dataset, self.category, f"{self.shots}shot", f"seed{self.seed}")


def build_jobs(dataset: str, data_root: str, categories: Union[str, Sequence[str]], shots: Sequence[int],
               seeds: Sequence[int]) -> list[Job]:
    """The grid in a fixed order; `categories` "all" (or ["all"]) means every category under data_root."""
    if str(dataset).lower() not in DATASETS:
        raise ConfigurationError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    dataset = str(dataset).lower()
    names = [categories] if isinstance(categories, str) else list(categories)
    if names == ["all"]:
        names = list_categories(dataset, data_root)
    if not names or not list(shots) or not list(seeds):
        raise ConfigurationError("the grid is empty: give at least one category, one shot count and one seed")
    return [Job(dataset, category, int(k), int(s)) for category in names for k in shots for s in seeds]


def run_grid(
    base: Union[str, os.PathLike, AnomCLIPModel],
    dataset: str,
    data_root: str,
    categories: Union[str, Sequence[str]],
    shots: Sequence[int],
    seeds: Sequence[int],
    output_dir: str,
    *,
    config: Optional[TrainingConfig] = None,
    resume_from_checkpoint: Optional[str] = None,
    on_error: str = "record",
    push_to_hub: Optional[HubTarget] = None,
) -> list[dict]:
    """Train every job of the grid not trained yet; returns all job summaries (on every process).

    on_error: "record" (a failing job gets status "failed" and its error; the others still run) or "raise".
    resume_from_checkpoint: "latest" continues each unfinished job from its newest checkpoint.
    push_to_hub: push each job's adapter to the repo its pattern names (checked for every job before any
        training); a finished job that was not pushed yet (e.g. the Hub was down) is pushed on the rerun.
    """
    if on_error not in ("record", "raise"):
        raise ConfigurationError(f"on_error={on_error!r}; expected 'record' or 'raise'")
    config = config or TrainingConfig()
    jobs = build_jobs(dataset, data_root, categories, shots, seeds)
    hub_repo_ids = push_to_hub.check_unique(jobs) if push_to_hub is not None else {}
    if resume_from_checkpoint not in (None, "latest") and len(jobs) > 1:
        raise ConfigurationError("a checkpoint folder can resume one job only; use 'latest' for a grid")
    state = PartialState(cpu=config.cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        # Each process would believe it is alone and train the whole grid, all writing the same folders.
        raise ConfigurationError(f"{launched} processes were launched but accelerate sees {state.num_processes}; "
                         "without GPUs pass --cpu (TrainingConfig.cpu=True) so they form a CPU process group")
    results, fatal = [], None
    try:
        with state.split_between_processes(jobs) as my_jobs:
            _run_jobs(my_jobs, results, base, data_root, output_dir, config, resume_from_checkpoint, on_error,
                      push_to_hub, hub_repo_ids)
    except _GridStop as stop:
        fatal = stop.error
    # Every process reaches the gather, also after a fatal error: otherwise the others would wait forever.
    results = gather_object(results + ([{"status": "aborted", "process": state.process_index,
                                         "error": f"{type(fatal).__name__}: {fatal}"}] if fatal else []))
    if fatal is not None:
        raise fatal
    aborted = [r for r in results if r["status"] == "aborted"]
    if aborted:
        raise GridAbortedError(f"the grid stopped: process {aborted[0]['process']} failed ({aborted[0]['error']})")
    order = {job: index for index, job in enumerate(jobs)}
    results.sort(key=lambda r: order[Job(r["dataset"], r["category"], r["shots"], r["seed"])])
    if state.is_main_process:
        base_name = base.config.base_model_name_or_path if isinstance(base, AnomCLIPModel) else os.fspath(base)
        write_json(os.path.join(output_dir, SUMMARY_FILE),
                   {"base": base_name, "dataset": dataset, "data_root": os.fspath(data_root),
                    "config": config.to_dict(), "processes": state.num_processes, "jobs": results})
    return results


def _run_jobs(my_jobs, results: list, base, data_root, output_dir, config, resume_from_checkpoint, on_error,
              push_to_hub, hub_repo_ids) -> None:
    """This process's share of the grid, each job's summary appended to `results`; a bad base (or a failing
    job with on_error="raise") raises _GridStop."""
    model = base if isinstance(base, AnomCLIPModel) else None
    owns_model = model is None
    for job in my_jobs:
        job_dir = job.directory(output_dir)
        try:
            finished = _finished_summary(job, job_dir, config)
            if finished is not None:
                results.append(_skipped(job, job_dir, finished, push_to_hub, hub_repo_ids.get(job), on_error))
                continue
            if model is None:  # once per process, shared by its jobs; a bad base stops the grid
                try:
                    model = load_base_model(base, config.model)
                except Exception as error:  # noqa: BLE001 - reported after the gather
                    raise _GridStop(error) from error
            results.append(train_category(model, job.category, job_dir, dataset=job.dataset,
                                          data_root=data_root, shots=job.shots, seed=job.seed, config=config,
                                          resume_from_checkpoint=resume_from_checkpoint,
                                          push_to_hub=push_to_hub))
        except _GridStop:
            raise
        except Exception as error:  # noqa: BLE001 - one bad category must not stop the grid
            if on_error == "raise":
                raise _GridStop(error) from error
            results.append(_failed(job, job_dir, error))
        finally:
            if owns_model and model is not None and job.category in model.categories:
                model.remove_category(job.category)  # keep one process's model lean across its jobs


class GridAbortedError(AnomCLIPError, RuntimeError):
    """Another process of the launch hit a fatal error; this one stops too (after the shared gather)."""


class _GridStop(Exception):
    """A failure that ends this process's share of the grid (a bad base, on_error="raise")."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _finished_summary(job: Job, job_dir: str, config: TrainingConfig) -> Optional[dict]:
    """The summary of a finished job (adapter and summary.json), None when the job has to run; ValueError when
    it was trained with other settings (the adapter is kept: the rerun is refused, not silently skipped)."""
    if not os.path.isfile(os.path.join(job_dir, ADAPTER_DIR, "category.json")):
        return None
    path = os.path.join(job_dir, SUMMARY_FILE)
    if not os.path.isfile(path):
        return None  # killed between saving the adapter and writing its summary: train it again
    with open(path, encoding="utf-8") as handle:
        summary = json.load(handle)
    stored = summary.get("run_settings")
    current = run_settings(config, job.dataset, job.category, job.shots, job.seed)
    if stored is not None and summary.get("run_hash") != settings_hash(current):
        differing = sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))
        changes = ", ".join(f"{key}: {stored.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise ConfigurationError(f"refusing to rerun {job_dir}: its adapter was trained with other settings ({changes}); "
                         "it is kept as it is. Use another --output-dir, or delete that folder to retrain")
    return summary


def _failed(job: Job, job_dir: str, error: Exception) -> dict:
    logger.error("job %s failed: %s", job, error)
    return {**asdict(job), "status": "failed", "job_dir": job_dir, "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=5)}


def _skipped(job: Job, job_dir: str, finished: dict, push_to_hub: Optional[HubTarget] = None,
             repo_id: Optional[str] = None, on_error: str = "record") -> dict:
    """A finished job's summary; with `push_to_hub`, its adapter is pushed unless summary.json records that."""
    summary = {**asdict(job), "job_dir": job_dir, "adapter_dir": os.path.join(job_dir, ADAPTER_DIR)}
    summary.update({k: v for k, v in finished.items() if k != "history"})
    summary["status"] = "skipped"
    if push_to_hub is not None and (summary.get("hub_repo_id") != repo_id or not summary.get("hub_commit")):
        try:
            summary.update(push_job_adapter(job_dir, os.path.join(job_dir, ADAPTER_DIR), repo_id, push_to_hub))
        except Exception as error:  # noqa: BLE001 - as a failed training job
            if on_error == "raise":
                raise
            return _failed(job, job_dir, error)
    return summary
