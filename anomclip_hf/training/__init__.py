"""PromptAD prompt training on top of AnomCLIPModel (plain torch + accelerate; the model knows nothing of it).

    config.py         TrainingConfig (docs/method/promptad.md, "Losses") and the YAML presets (training/presets/)
    step.py           the objective and one optimisation step (shared by the loop and the parity tests); the
                      text tower under the autocast of `config.precision` (anomclip_hf.model.precision decides)
    loop.py           fit_prompts: one full-batch SGD step per epoch, logging, checkpoints, resume
    checkpointing.py  safetensors + JSON checkpoints (prompt vectors, optimiser, scheduler, RNG, progress), no pickle
    inputs.py         base model and reference images, checked before anything is written
    job.py            train_category: one (dataset, category, shots, seed) job -> adapter folder + summary
    grid.py           run_grid: many jobs shared out over the processes of an accelerate launch
    arguments.py      command-line flags for every TrainingConfig field

Lazy: `anomclip --help` reads only arguments.py and config.py; the loop and torch load on first use of a name.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"add_training_arguments": "arguments", "config_from_args": "arguments", "TrainingConfig": "config",
            "available_presets": "config", "Job": "grid", "build_jobs": "grid", "run_grid": "grid",
            "train_category": "job", "FitResult": "loop", "fit_prompts": "loop", "ShotFeatures": "step",
            "build_optimizer": "step", "build_scheduler": "step", "encode_shots": "step",
            "promptad_objective": "step", "training_step": "step"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
