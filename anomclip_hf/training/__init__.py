"""PromptAD prompt training on top of AnomCLIPModel (plain torch + accelerate; the model knows nothing of it).

    config.py         TrainingConfig (spec section 4) and the YAML presets (training/presets/)
    step.py           the objective and one optimisation step (shared by the loop and the parity tests); the
                      text tower under the autocast of `config.precision` (anomclip_hf.precision decides)
    loop.py           fit_prompts: one full-batch SGD step per epoch, logging, checkpoints, resume
    checkpointing.py  accelerate save_state/load_state of the prompt vectors, optimiser, scheduler, progress
    inputs.py         base model and reference images, checked before anything is written
    job.py            train_category: one (dataset, category, shots, seed) job -> adapter folder + summary
    grid.py           run_grid: many jobs shared out over the processes of an accelerate launch
    arguments.py      command-line flags for every TrainingConfig field
"""

from .arguments import add_training_arguments, config_from_args
from .config import TrainingConfig, available_presets
from .grid import Job, build_jobs, run_grid
from .job import train_category
from .loop import FitResult, fit_prompts
from .step import ShotFeatures, build_optimizer, build_scheduler, encode_shots, promptad_objective, training_step

__all__ = [
    "FitResult",
    "Job",
    "ShotFeatures",
    "TrainingConfig",
    "add_training_arguments",
    "available_presets",
    "build_jobs",
    "build_optimizer",
    "build_scheduler",
    "config_from_args",
    "encode_shots",
    "fit_prompts",
    "promptad_objective",
    "run_grid",
    "train_category",
    "training_step",
]
