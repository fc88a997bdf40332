"""Decision thresholds of a category, estimated from its normal references alone.

The k references are the memory bank, so each scores 0 against it: their own scores say nothing.
Leave-one-out does: reference i is scored against a memory of the other k - 1 references (with the
category's prompts), which is what an unseen normal image of the same part looks like to the model,
only a little harsher (one reference fewer). The threshold is the highest of those scores raised by a
relative margin:

    image threshold = (1 + margin) * max_i  image_score_i(memory without i)
    pixel threshold = (1 + margin) * max_i  max over pixels of map_i(memory without i)

The pixel threshold draws the predicted-defect contours of the overlays. It needs k >= 2; with a single
reference no estimate exists and the caller must pass a threshold (`predict --threshold`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .decisions import decision  # noqa: F401 (re-exported)
from .vv_attention import VisionFeatures

DEFAULT_MARGIN = 0.1


@dataclass
class ThresholdEstimate:
    image: float
    pixel: float
    margin: float
    method: str
    leave_one_out_image_scores: list[float]
    leave_one_out_pixel_maxima: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def leave_one_out_scores(model, references: VisionFeatures, category: Optional[str] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores (k,), map maxima (k,)) of each reference scored against the memory of the others.

    `references` are the references' `encode_images` output, in the order of the category's memory bank
    (the features the memory bank was built from, so the vision tower does not run again).
    """
    state = model.get_category(category)
    if state.memory_bank is None:
        raise ValueError(f"category {state.name!r} has no reference images; a threshold needs k >= 2 references")
    shots = state.memory_bank[0].shape[0]
    if shots < 2:
        raise ValueError(f"category {state.name!r} has {shots} reference image; leave-one-out needs at least 2 "
                         "(pass a threshold instead)")
    if references.global_embeds.shape[0] != shots:
        raise ValueError(f"{references.global_embeds.shape[0]} reference images given, but the memory bank "
                         f"holds {shots}")
    image_scores, pixel_maxima = [], []
    with torch.inference_mode():
        for index in range(shots):
            keep = torch.arange(shots, device=state.memory_bank[0].device) != index
            held_out = VisionFeatures(references.global_embeds[index: index + 1],
                                      references.patch_embeds[index: index + 1],
                                      [layer[index: index + 1] for layer in references.memory_features])
            out = model.score_features(held_out, state.name, memory_bank=[layer[keep] for layer in state.memory_bank])
            image_scores.append(out.image_scores[0].float().cpu())
            pixel_maxima.append(out.anomaly_maps[0].float().max().cpu())
    return torch.stack(image_scores), torch.stack(pixel_maxima)


def estimate_thresholds(model, references: VisionFeatures, category: Optional[str] = None,
                        margin: float = DEFAULT_MARGIN) -> ThresholdEstimate:
    """Leave-one-out thresholds of a category (see the module docstring), stored in its metadata."""
    if margin < 0:
        raise ValueError(f"margin={margin}; expected >= 0")
    image_scores, pixel_maxima = leave_one_out_scores(model, references, category)
    estimate = ThresholdEstimate(
        image=float((1 + margin) * image_scores.max()), pixel=float((1 + margin) * pixel_maxima.max()),
        margin=margin, method="leave-one-out over the references",
        leave_one_out_image_scores=[float(s) for s in image_scores],
        leave_one_out_pixel_maxima=[float(s) for s in pixel_maxima])
    record_thresholds(model.get_category(category), estimate)
    return estimate


def record_thresholds(state, estimate: ThresholdEstimate) -> None:
    """Write an estimate into a category's metadata (and so into its category.json)."""
    state.metadata["decision_threshold"] = estimate.image
    state.metadata["pixel_threshold"] = estimate.pixel
    state.metadata["threshold_estimate"] = estimate.to_dict()


def try_estimate_thresholds(model, references: VisionFeatures, category: Optional[str] = None,
                            margin: float = DEFAULT_MARGIN) -> Optional[ThresholdEstimate]:
    """`estimate_thresholds`, or None (thresholds left unset) when there are fewer than 2 references."""
    if references.global_embeds.shape[0] < 2:
        state = model.get_category(category)
        state.metadata.update(decision_threshold=None, pixel_threshold=None, threshold_estimate=None)
        return None
    return estimate_thresholds(model, references, category, margin)
