"""The app's base model: a CLIP (or AnomCLIP) id or folder, or the demo's embedded random CLIP.

As in `anomclip demo`: the default is the demo's Hub CLIP; when the Hub cannot be reached and the model is
not cached, nothing is loaded and the page says so and offers the embedded random base, whose results are
labelled PIPELINE CHECK everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..hub.base_source import hub_reachable, is_cached
from ..hub.validation import validate_repo_id
from ..io.labels import PIPELINE_CHECK_NOTE, is_random_base
from ..model.embedded_base import (
    DEFAULT_BACKBONE,
    EMBEDDED_BACKBONE,
    embedded_demo_model,
)
from ..errors import ArgumentError

# The training preset whose model settings the base is loaded with (the one `anomclip fit` defaults to).
FIT_PRESET = "paper"


@dataclass
class BaseChoice:
    name: str
    model: object = None  # AnomCLIPModel, None when it could not be loaded (see message)
    pipeline_check: bool = False
    message: str = ""


def offline_message(name: str) -> str:
    return (f"The Hugging Face Hub cannot be reached and {name} is not cached: enter a local CLIP folder, or use "
            f"the embedded random base ({EMBEDDED_BACKBONE}), whose results are a {PIPELINE_CHECK_NOTE}.")


def choose_base(base: Optional[str] = None) -> BaseChoice:
    """Load `base` (default: the demo's Hub CLIP). A folder or a reachable/cached Hub id is loaded (errors
    raise); EMBEDDED_BACKBONE gives the embedded random CLIP; an unreachable Hub id gives no model and the
    offline message."""
    name = (base or DEFAULT_BACKBONE).strip()
    if name == EMBEDDED_BACKBONE:
        return BaseChoice(name, embedded_demo_model(), pipeline_check=True,
                          message=f"Base: {EMBEDDED_BACKBONE}, {PIPELINE_CHECK_NOTE}.")
    if not os.path.isdir(name):
        try:
            validate_repo_id(name)
        except ValueError:
            raise ArgumentError(f"base {name!r} is neither a folder nor a Hub model id") from None
        if not is_cached(name) and not hub_reachable():
            return BaseChoice(name, None, message=offline_message(name))
    from ..training import TrainingConfig
    from ..training.inputs import load_base_model

    model = load_base_model(name, TrainingConfig.from_preset(FIT_PRESET).model)
    if is_random_base(model):  # e.g. a saved demo base: labelled as the embedded one is
        return BaseChoice(name, model, pipeline_check=True, message=f"Base: {name}, {PIPELINE_CHECK_NOTE}.")
    return BaseChoice(name, model, message=f"Base: {name}.")
