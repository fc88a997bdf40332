"""The PIPELINE CHECK label of results made with a base of random weights (the demo's offline base, or any
base whose config says `random_weights: true`): its numbers test the pipeline, they detect nothing.

Every output writer asks here: scores.csv and overlays (prediction), results.* (evaluation), the adapter's
and the base's model card, the job summary and the demo's metrics.
"""

from __future__ import annotations

PIPELINE_CHECK_NOTE = "PIPELINE CHECK (random backbone), not a detection result"


def is_random_base(model_or_config) -> bool:
    """True when the model (or its AnomCLIPConfig) was built from random weights."""
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "random_weights", False))


def pipeline_check_note(model_or_config) -> str:
    """The label text for outputs of this model ("" for a real base)."""
    return PIPELINE_CHECK_NOTE if is_random_base(model_or_config) else ""


def pipeline_check_fields(model_or_config) -> dict:
    """{"pipeline_check": True, "note": ...} for JSON outputs of a random base, {} otherwise."""
    return {"pipeline_check": True, "note": PIPELINE_CHECK_NOTE} if is_random_base(model_or_config) else {}
