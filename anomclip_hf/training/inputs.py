"""What a job needs before training starts: the base model and the k reference images, checked up front.

Everything that can fail on bad input (unknown dataset, missing or empty category, k too large, an
unreadable image) fails here, before any output folder is created.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from transformers import PretrainedConfig

from ..data import load_split, sample_shots
from ..data.schema import NORMAL
from ..io.image_io import load_image
from ..model.category import PROMPT_TOKEN_KEYS
from ..model.memory_bank import REFERENCE_BATCH, encode_references
from ..model.modeling_anomclip import AnomCLIPModel, is_anomclip_base
from ..model.thresholds import ThresholdEstimate, record_thresholds
from ..model.vv_attention import VisionFeatures
from .config import validate_model_settings
from ..errors import ConfigurationError


def select_references(dataset: str, data_root: str, category: str, shots: Union[int, str], seed: int) -> list[str]:
    """The k normal training images of a job: `sample_shots` over the category's train split ("all": every one)."""
    if data_root is None:
        raise ConfigurationError("data_root is required: the folder holding the dataset")
    train = load_split(dataset, data_root, category, "train")
    if shots == "all":
        shots = sum(1 for label in train["label"] if label == NORMAL)
    return sample_shots(train, shots, seed)


def read_references(paths) -> list:
    """Decode the images now, so a truncated file fails before training (the loaders only read headers).

    Up to REFERENCE_BATCH images come back decoded (one batch through the vision tower); a larger set is
    decoded image by image to check it and comes back as its paths, streamed from the files batch by batch."""
    if len(paths) <= REFERENCE_BATCH:
        return [load_image(path) for path in paths]
    for path in paths:
        load_image(path)
    return [os.fspath(path) for path in paths]


def add_reference_category(model: AnomCLIPModel, dataset: str, data_root: str, category: str, shots: int,
                           seed: int):
    """An untrained category: k drawn shots as its memory bank, hand-written prompts, leave-one-out
    thresholds; the drawn files are recorded in its metadata (and so in category.json)."""
    references = select_references(dataset, data_root, category, shots, seed)
    spill = model.memory_plan(len(references), None, None) is not None
    vision = encode_references(model, read_references(references), spill=spill)  # memory bank and thresholds
    state = model.add_category(category, reference_images=vision, seed=seed)
    state.metadata["reference_files"] = [os.path.relpath(path, data_root) for path in references]
    try_estimate_thresholds(model, vision, category)
    return state


def try_estimate_thresholds(model: AnomCLIPModel, references: VisionFeatures, category: Optional[str] = None,
                            progress: bool = False) -> Optional[ThresholdEstimate]:
    """`model.estimate_thresholds`, or None (thresholds left unset) when there are fewer than 2 references."""
    if references.global_embeds.shape[0] < 2:
        record_thresholds(model.get_category(category).metadata, None)
        return None
    return model.estimate_thresholds(references, category, progress=progress)


def load_base_model(base, model_settings: Optional[Mapping[str, Any]] = None) -> AnomCLIPModel:
    """`--base`: an AnomCLIP base folder/repo (from_pretrained) or any CLIP id/folder (from_clip), with the
    preset's model settings applied. An AnomCLIP base keeps its prompt-token structure."""
    settings = dict(model_settings or {})
    config_dict, _ = PretrainedConfig.get_config_dict(os.fspath(base))
    is_anomclip = is_anomclip_base(config_dict)
    validate_model_settings(settings, config_dict.get("clip_config") if is_anomclip else config_dict)
    if is_anomclip:
        changed = sorted(k for k in PROMPT_TOKEN_KEYS if k in settings and settings[k] != config_dict.get(k))
        if changed:
            raise ConfigurationError(f"model settings {changed} change the prompt tokens of the AnomCLIP base {base}; "
                             "start from its CLIP model instead")
    return AnomCLIPModel.from_base(base, **settings)


def check_model_settings(model: AnomCLIPModel, model_settings: Mapping[str, Any]) -> None:
    """A model passed in directly must already have the preset's settings (they cannot change after loading)."""
    differing = {k: (getattr(model.config, k, None), v) for k, v in model_settings.items()
                 if getattr(model.config, k, None) != v}
    if differing:
        raise ConfigurationError(f"the given model's settings differ from the training config's model settings "
                         f"(model, config): {differing}; load the model with them")
