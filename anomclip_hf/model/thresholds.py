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

from .decisions import decision, normalized_score  # noqa: F401 (re-exported)

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


def threshold_estimate(image_scores: torch.Tensor, pixel_maxima: torch.Tensor,
                       margin: float = DEFAULT_MARGIN) -> ThresholdEstimate:
    """The thresholds from the references' leave-one-out image scores and map maxima (see the module
    docstring; `AnomCLIPModel.leave_one_out_scores` computes them)."""
    if margin < 0:
        raise ValueError(f"margin={margin}; expected >= 0")
    return ThresholdEstimate(
        image=float((1 + margin) * image_scores.max()), pixel=float((1 + margin) * pixel_maxima.max()),
        margin=margin, method="leave-one-out over the references",
        leave_one_out_image_scores=[float(s) for s in image_scores],
        leave_one_out_pixel_maxima=[float(s) for s in pixel_maxima])


def record_thresholds(metadata: dict, estimate: Optional[ThresholdEstimate]) -> None:
    """Write an estimate into a category's metadata (and so into its category.json); None clears them."""
    metadata["decision_threshold"] = None if estimate is None else estimate.image
    metadata["pixel_threshold"] = None if estimate is None else estimate.pixel
    metadata["threshold_estimate"] = None if estimate is None else estimate.to_dict()
