"""`anomclip predict` under `accelerate launch --num_processes N -m anomclip_hf predict ...` (or torchrun).

On a machine without GPUs use `accelerate launch --multi_gpu --num_processes N ...`: accelerate's `--cpu` flag
starts one process only (its multi-CPU launch needs mpirun), while `--multi_gpu` runs torchrun, and the
processes then form a CPU (gloo) group.

The image list is cut into N contiguous shards with accelerate's `split_between_processes`; each process
scores its shard with its own Predictor through the single-process writer (`Predictor.write`) into
`OUTPUT/shards/RANK-of-N/` (its scores.csv and errors.csv are written atomically there), moves the shard's
overlays (and maps, masks) into `OUTPUT/`, and marks the shard done. The main process then writes the one
`scores.csv` (input order) and `errors.csv`. `OUTPUT/shards/plan.json` records the inputs and settings: a rerun
of the same command skips the finished shards (a killed launch resumes); any other run starts afresh.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from typing import Callable, Optional, Sequence

from ..errors import AnomCLIPError, ArgumentError
from ..inference.predictor import Predictor
from ..inference.writers import (
    ERRORS_FILE,
    MAPS_DIR,
    MASKS_DIR,
    OVERLAY_DIR,
    SCORES_FILE,
    PredictionResult,
    RunManifest,
    record_outputs,
    remove_earlier_outputs,
)
from ..io.atomic_io import write_json
from ..io.run_lock import folder_lock
from .merge import plan_hash, write_merged

SHARDS_DIR, PLAN_FILE, DONE_FILE = "shards", "plan.json", "done.json"
SHARD_NAME = re.compile(r"\d{5}-of-\d{5}")  # the folder of one process's shard


def launched_processes() -> int:
    """How many processes `accelerate launch` (or torchrun) started: WORLD_SIZE, 1 outside a launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_state():
    """accelerate's PartialState of this launch; without a GPU the processes form a CPU (gloo) group."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class ShardFailedError(AnomCLIPError, RuntimeError):
    """Another process of the launch could not score its shard; this one stops too (after the shared gather)."""


def predict_sharded(build_predictor: Callable[[], Predictor], paths: Sequence[str], output_dir: str, *,
                    settings: dict, root: Optional[str] = None, not_images: Sequence[str] = (),
                    unlistable: Sequence[tuple[str, str]] = (), save_maps: bool = False,
                    progress: bool = True, overlays: str = "all") -> Optional[PredictionResult]:
    """Score `paths` over the launch's processes; the merged result on the main process, None on the others.

    build_predictor: called at most once per process, only when its shard is not finished yet.
    settings: what decides the scores (`PredictorSpec.settings()`), recorded in the plan.
    """
    state = launch_state()
    if launched_processes() > state.num_processes:
        raise ArgumentError(f"{launched_processes()} processes were launched but accelerate sees {state.num_processes}")
    paths = list(paths)
    plan = {"hash": plan_hash(paths, root=root, save_maps=save_maps, overlays=overlays,
                              processes=state.num_processes, **settings),
            "images": len(paths), "processes": state.num_processes}
    shards = os.path.join(output_dir, SHARDS_DIR)
    with contextlib.ExitStack() as held:
        if state.is_main_process:
            os.makedirs(output_dir, exist_ok=True)
            held.enter_context(folder_lock(output_dir, "predict run"))
            _start_or_resume(output_dir, shards, plan)
        state.wait_for_everyone()
        with state.split_between_processes(list(range(len(paths)))) as mine:
            status = _score_shard(build_predictor, paths, mine, shards, plan, state.process_index, root=root,
                                  output_dir=output_dir, save_maps=save_maps, progress=progress, overlays=overlays)
        from accelerate.utils import gather_object

        statuses = gather_object([status])  # every process gets here, also after a failure
        # The last collective: leave the group now, so no process exits with its gloo threads still running
        # (under load that aborts the process at exit: "terminate called without an active exception").
        state.destroy_process_group()
        failed = [s for s in statuses if s["error"]]
        if failed:
            raise ShardFailedError(f"shard {failed[0]['shard']} failed: {failed[0]['error']}")
        if not state.is_main_process:
            return None
        threshold = next((s["threshold"] for s in statuses if s["threshold"] is not None), None)
        result = _merge(output_dir, shards, [s["shard"] for s in statuses], threshold, not_images, unlistable)
        result.skipped_shards = [s["shard"] for s in statuses if s["skipped"]]
        return result


def _start_or_resume(output_dir: str, shards: str, plan: dict) -> None:
    """Keep the shards of the same plan (a rerun resumes); otherwise remove them and the earlier run's outputs."""
    plan_file = os.path.join(shards, PLAN_FILE)
    try:
        with open(plan_file, encoding="utf-8") as handle:
            same = json.load(handle).get("hash") == plan["hash"]
    except (OSError, ValueError):
        same = False
    if not same:
        remove_earlier_outputs(output_dir)
        _clear_shards(shards)
        write_json(plan_file, plan)
    else:  # the merged CSVs are rewritten from the shards at the end
        for name in (SCORES_FILE, ERRORS_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))


def _score_shard(build_predictor, paths, mine: Sequence[int], shards: str, plan: dict, rank: int, *,
                 root, output_dir: str, save_maps: bool, progress: bool, overlays: str = "all") -> dict:
    shard = f"{rank:05d}-of-{plan['processes']:05d}"
    folder = os.path.join(shards, shard)
    done = os.path.join(folder, DONE_FILE)
    status = {"shard": shard, "error": "", "threshold": None, "skipped": False}
    try:
        finished = _read_done(done)
        if finished is not None and finished.get("plan") == plan["hash"]:
            return {**status, "threshold": finished.get("threshold"), "skipped": True}
        mine = list(mine)
        if not mine:  # more processes than images
            write_json(done, {"plan": plan["hash"], "first": None, "images": 0, "threshold": None})
            return status
        predictor = build_predictor()
        predictor.write([paths[i] for i in mine], folder, root=root, save_maps=save_maps, progress=progress,
                        overlays=overlays)
        pictures = [name for name in RunManifest(folder).recorded() if name.split(os.sep)[0] in
                    (OVERLAY_DIR, MAPS_DIR, MASKS_DIR)]
        for name in pictures:  # only what this shard wrote: the shard folder is the run's own
            target = os.path.join(output_dir, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(folder, name), target)
        for part in (OVERLAY_DIR, MAPS_DIR, MASKS_DIR):
            _remove_empty_folders(os.path.join(folder, part))
        write_json(done, {"plan": plan["hash"], "first": mine[0] if mine else None, "images": len(mine),
                          "threshold": predictor.threshold, "files": pictures})
        return {**status, "threshold": predictor.threshold}
    except Exception as error:  # noqa: BLE001 - reported to every process after the gather
        return {**status, "error": f"{type(error).__name__}: {error}"}


def _read_done(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _clear_shards(shards: str) -> None:
    """Remove what earlier launches wrote under shards/ (the plan, each RANK-of-N folder's CSVs, done marker and
    recorded files), and the folders this empties; anything else there stays."""
    if not os.path.isdir(shards):
        return
    for name in os.listdir(shards):
        folder = os.path.join(shards, name)
        if not (SHARD_NAME.fullmatch(name) and os.path.isdir(folder) and not os.path.islink(folder)):
            continue
        RunManifest(folder).remove_recorded()
        for written in (SCORES_FILE, ERRORS_FILE, DONE_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, written))
        _remove_empty_folders(folder)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(shards, PLAN_FILE))
    with contextlib.suppress(OSError):
        os.rmdir(shards)


def _remove_empty_folders(top: str) -> None:
    """Remove `top` and the folders under it that are empty (a folder with anything in it stays)."""
    for folder, _, _ in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _merge(output_dir: str, shards: str, names: Sequence[str], threshold, not_images, unlistable) -> PredictionResult:
    """scores.csv and errors.csv of the whole run from the shards' (contiguous shards, so input order)."""
    header, rows, failures, files = None, [], [], []
    for name in names:
        folder = os.path.join(shards, name)
        files += (_read_done(os.path.join(folder, DONE_FILE)) or {}).get("files") or []
        if not os.path.exists(os.path.join(folder, SCORES_FILE)):
            continue  # an empty shard
        with open(os.path.join(folder, SCORES_FILE), newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        header = header or table[0]
        rows += table[1:]
        errors = os.path.join(folder, ERRORS_FILE)
        if os.path.exists(errors):
            with open(errors, newline="", encoding="utf-8") as handle:
                failures += [tuple(row) for row in list(csv.reader(handle))[1:]]
    result = write_merged(output_dir, header or ["path", "image_score", "normalized_score", "decision"], rows,
                          failures, threshold=threshold, not_images=not_images, unlistable=unlistable)
    record_outputs(output_dir, [*files, SCORES_FILE, *([ERRORS_FILE] if result.failures else [])])
    return result
