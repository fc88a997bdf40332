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

A coreset memory: reference i is scored against the coreset without the rows taken from reference i: the memory
the deployed model really has, less what that reference contributed. An unseen normal image meets exactly that
memory (the coreset, none of its own patches), so the threshold describes the deployed bank. Against the full
bank's leave-one-out it is never lower (a subset of the other references' rows is farther away, and the fusion
is increasing): the coreset's extra distance, at most the coverage radius per patch, is in the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from ..errors import ArgumentError, CategoryError
from ..io.progress import Phase
from .decisions import decision, normalized_score  # noqa: F401 (re-exported)
from .memory_bank import encode_references, image_memory_rows, progress_bar
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


def threshold_estimate(image_scores: torch.Tensor, pixel_maxima: torch.Tensor,
                       margin: float = DEFAULT_MARGIN) -> ThresholdEstimate:
    """The thresholds from the references' leave-one-out image scores and map maxima (see the module
    docstring; `AnomCLIPModel.leave_one_out_scores` computes them)."""
    if margin < 0:
        raise ArgumentError(f"margin={margin}; expected >= 0")
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


def leave_one_out_scores(model, references: VisionFeatures, category: Optional[str] = None,
                         progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """See `AnomCLIPModel.leave_one_out_scores`."""
    state = model.get_category(category)
    bank = state.memory_bank
    if bank is None:
        raise CategoryError(f"category {state.name!r} has no reference images; a threshold needs k >= 2 references")
    shots = state.shots
    if shots < 2:
        raise CategoryError(f"category {state.name!r} has {shots} reference image; leave-one-out needs at least 2 "
                            "(pass a threshold instead)")
    if references.global_embeds.shape[0] != shots:
        raise ArgumentError(f"{references.global_embeds.shape[0]} reference images given, but the memory bank "
                            f"holds {shots}")
    if state.coreset is not None:
        if state.coreset_sources is None:
            raise CategoryError(f"category {state.name!r} has a coreset memory loaded from an adapter: the thresholds "
                                "of a coreset are estimated where it is built (add_category, fit), which knows "
                                "the reference each kept row comes from")
        return coreset_leave_one_out(model, state.name, bank, state.coreset_sources, references, progress)
    image_scores, pixel_maxima = [], []
    with torch.inference_mode(), Phase("thresholds", shots, "img", enabled=progress) as bar:
        for index in range(shots):
            keep = torch.arange(shots, device=bank[0].device) != index
            held_out = VisionFeatures(references.global_embeds[index: index + 1],
                                      references.patch_embeds[index: index + 1],
                                      [layer[index: index + 1] for layer in references.memory_features])
            # at the scoring size, so the pixel threshold is defined like the image one
            out = model.score_features(held_out, state.name, output_size=model.config.scoring_size,
                                       memory_bank=[layer[keep] for layer in bank])
            image_scores.append(out.image_scores[0].float().cpu())
            pixel_maxima.append(out.anomaly_maps[0].float().max().cpu())
            bar.update(1)
    return torch.stack(image_scores), torch.stack(pixel_maxima)


def coreset_leave_one_out(model, category: str, bank: Sequence[torch.Tensor], sources: Sequence[torch.Tensor],
                          references: VisionFeatures, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores (k,), map maxima (k,)): reference i against the coreset rows not taken from reference i."""
    count, patches = int(references.global_embeds.shape[0]), int(references.patch_embeds.shape[1])
    device = bank[0].device
    image_scores, pixel_maxima = [], []
    bar = progress_bar(count, progress, "thresholds")
    with torch.inference_mode():
        for index in range(count):
            held_out = VisionFeatures(references.global_embeds[index: index + 1],
                                      references.patch_embeds[index: index + 1],
                                      [image_memory_rows(layer, index, patches).to(device)
                                       for layer in references.memory_features])
            others = [layer[(source != index).to(device)] for layer, source in zip(bank, sources)]
            if min(layer.shape[0] for layer in others) == 0:
                raise CategoryError(f"every kept memory row of a layer comes from reference {index}: no memory of the "
                                 "other references is left to score it against; keep more rows (memory_size)")
            out = model.score_features(held_out, category, output_size=model.config.scoring_size, memory_bank=others)
            image_scores.append(out.image_scores[0].float().cpu())
            pixel_maxima.append(out.anomaly_maps[0].float().max().cpu())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return torch.stack(image_scores), torch.stack(pixel_maxima)


def estimate_thresholds(model, reference_images, category: Optional[str] = None,
                        margin: Optional[float] = None, progress: bool = False) -> ThresholdEstimate:
    """See `AnomCLIPModel.estimate_thresholds`."""
    if not isinstance(reference_images, VisionFeatures):  # images, paths or pixels: encoded batch by batch
        reference_images = encode_references(model, reference_images)
    estimate = threshold_estimate(*leave_one_out_scores(model, reference_images, category, progress),
                                  DEFAULT_MARGIN if margin is None else margin)
    record_thresholds(model.get_category(category).metadata, estimate)
    return estimate
