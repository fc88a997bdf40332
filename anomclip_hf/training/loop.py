"""The training loop: full-batch SGD on the prompt vectors of one category, one step per epoch.

No test-set evaluation inside the loop (the reported model is the final epoch's: docs/method/promptad.md, "Evaluation protocol"), and
no data loader: the k shots' frozen features are computed once, before the loop.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence


from ..errors import AnomCLIPError
from ..model.modeling_anomclip import AnomCLIPModel
from ..io.progress import Phase
from ..model.precision import PrecisionChoice, resolve_precision
from .checkpointing import (
    TrainingProgress,
    clear_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .step import ShotFeatures, build_optimizer, build_scheduler, training_step

logger = logging.getLogger(__name__)


class NonFiniteLossError(AnomCLIPError, ValueError):
    """The training loss became NaN or infinite: the prompt vectors are garbage from here on."""


# callback(epoch, logs) after every epoch (after its checkpoint); raising stops the run there.
EpochCallback = Callable[[int, dict], None]


@dataclass
class FitResult:
    history: list  # one dict per epoch: epoch, stage, lr and every loss term
    epochs: int
    resumed_from: Optional[str]
    start_epoch: int  # first epoch run in this session
    wall_time_s: float  # cumulative over resumed sessions

    def final_losses(self) -> dict:
        """The logs of the last epoch of every stage, keyed by stage name."""
        finals: dict = {}
        for logs in self.history:
            finals[logs["stage"]] = {k: v for k, v in logs.items() if k not in ("stage",)}
        return finals


def fit_prompts(model: AnomCLIPModel, category: str, features: ShotFeatures, config, accelerator, *,
                checkpoint_dir: Optional[str] = None, resume_from: Optional[str] = None,
                fingerprint: Optional[dict] = None, callbacks: Sequence[EpochCallback] = (),
                description: str = "", precision: Optional[PrecisionChoice] = None) -> FitResult:
    """Train `category`'s prompt vectors in place for config.total_epochs (or what is left after `resume_from`).

    Checkpoints (prompt tensor, optimizer, scheduler, RNG, progress) are safetensors + JSON (`checkpointing`);
    nothing is wrapped in DDP (each job is an independent run). A non-finite loss stops the run with
    NonFiniteLossError before anything of that epoch is saved. precision: of the text tower (default: resolved
    from config.precision for the accelerator's device).
    """
    precision = precision or resolve_precision(config.precision, accelerator.device)
    temperature = model.temperature
    vectors = model.prompt_parameters(category)
    optimizer = build_optimizer(vectors, config)
    scheduler = build_scheduler(optimizer, config)
    # The scheduler stays unprepared: accelerate's wrapper steps it once per process, which would
    # fast-forward the cosine schedule of independent jobs under a multi-process launch.
    optimizer = accelerator.prepare_optimizer(optimizer)
    progress = TrainingProgress(fingerprint=fingerprint or config.run_fingerprint())
    states = dict(vectors=vectors[0], optimizer=optimizer, scheduler=scheduler, progress=progress,
                  scaler=getattr(accelerator, "scaler", None))
    if resume_from:
        load_checkpoint(resume_from, **states)
        logger.info("resumed %s from %s after epoch %d", description or category, resume_from, progress.epoch)
    elif checkpoint_dir:
        clear_checkpoints(checkpoint_dir)

    total, start = config.total_epochs, progress.epoch + 1
    bar = Phase(f"training {description or category}".strip(), total, "epoch", initial=progress.epoch,
                enabled=config.progress_bar is not False)
    try:
        for epoch in range(start, total + 1):
            began = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            terms = training_step(model, category, features, optimizer, config, config.uses_margin(epoch),
                                  backward=accelerator.backward, temperature=temperature, precision=precision)
            if not math.isfinite(terms["loss"]):
                raise NonFiniteLossError(
                    f"training {description or category} stopped: the loss is {terms['loss']} at epoch {epoch} "
                    f"(lr {lr:g}); nothing of this epoch was saved. Lower --lr or check the reference images")
            scheduler.step()
            logs = {"epoch": epoch, "stage": config.stage(epoch), "lr": lr, **terms}
            progress.epoch = epoch
            progress.history.append(logs)
            progress.wall_time_s += time.perf_counter() - began
            accelerator.log({f"train/{k}": v for k, v in logs.items() if k not in ("epoch", "stage")}, step=epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", stage=logs["stage"])
            if checkpoint_dir and config.checkpoint_every and epoch % config.checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, epoch, limit=config.checkpoint_limit, **states)
            for callback in callbacks:
                callback(epoch, logs)
        bar.close()  # done: on a terminal the bar goes, elsewhere one line with the duration
    finally:
        bar.abandon()
        model.clear_prototype_cache(category)  # the vectors changed; prototypes are recomputed on demand
    return FitResult(history=list(progress.history), epochs=total, resumed_from=resume_from, start_epoch=start,
                     wall_time_s=progress.wall_time_s)
