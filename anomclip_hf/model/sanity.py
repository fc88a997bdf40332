"""Sanity of what a category scores with (its text prototypes and memory-bank rows) and of what scoring
computes (features, scores): degenerate or non-finite values are refused by name, never scored.

A tensor can have the right shape, dtype and finite values and still score every image the same: a memory
bank scaled by 1e30 makes every cosine huge (every patch score clamps to 0), one scaled to ~0 makes every
patch score 0.5, prototypes whose normal and anomaly rows are equal give every image the text score 0.5,
and prompt vectors too large for the text tower give NaN prototypes (and NaN becomes 0 in the fusion).
These checks refuse such tensors by name, before a category is used; and whatever still turns NaN while
scoring (pixel values far out of range overflow the vision tower) is refused rather than returned.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

from ..errors import ArgumentError, CategoryError, CheckpointError

# What save_category writes is L2-normalised in float32 (|norm - 1| ~ 1e-7); anything further off was not.
UNIT_NORM_TOLERANCE = 1e-3
# |anomaly - normal| of unit prototypes below this: their text scores are 0.5 for every image (to 1e-4).
MIN_PROTOTYPE_DISTANCE = 1e-4


def unit_rows_problem(tensor: torch.Tensor) -> Optional[str]:
    """None if every row (last axis) of `tensor` is finite with L2 norm 1, else what is wrong."""
    rows = tensor.detach().reshape(-1, tensor.shape[-1])
    # amax/amin propagate NaN and are the extremes: both finite iff every value is (no mask of a large bank).
    if rows.numel() and not (torch.isfinite(rows.amax()) and torch.isfinite(rows.amin())):
        bad = int((~torch.isfinite(rows)).sum())
        return f"holds {bad} NaN or infinite values; expected finite unit vectors"
    norms = torch.linalg.vector_norm(rows.double(), dim=-1) if rows.numel() < (1 << 24) else \
        torch.linalg.vector_norm(rows, dim=-1).double()  # a bank of millions of rows: its float32 norms suffice
    off = (norms - 1.0).abs() > UNIT_NORM_TOLERANCE
    if bool(off.any()):
        first = int(off.nonzero()[0, 0])
        return (f"has {int(off.sum())} of {rows.shape[0]} rows that are not unit vectors (row {first} has norm "
                f"{float(norms[first]):.3g}); expected L2 norm 1 (within {UNIT_NORM_TOLERANCE:g}), as save_category "
                "writes them")
    return None


def prototypes_problem(prototypes: torch.Tensor) -> Optional[str]:
    """None if (2, D) [normal, anomaly] prototypes are finite, unit and distinct, else what is wrong."""
    problem = unit_rows_problem(prototypes)
    if problem:
        return problem
    distance = float(torch.linalg.vector_norm((prototypes[1] - prototypes[0]).double()))
    if distance < MIN_PROTOTYPE_DISTANCE:
        return (f"has equal normal and anomaly rows (distance {distance:.3g}); every image would get the text score "
                "0.5: expected distinct prototypes")
    return None


def check_prototypes(prototypes: Mapping[str, torch.Tensor], where: str, error: type = CategoryError) -> None:
    """`error` "{where} {head!r} {problem}" for the first head whose prototypes are degenerate (an AdapterError
    when they were read from an adapter)."""
    for head in sorted(prototypes):
        problem = prototypes_problem(prototypes[head])
        if problem:
            raise error(f"{where} {head!r} {problem}")


def check_unit_rows(tensors: Mapping[str, torch.Tensor], where: str, error: type = CategoryError) -> None:
    """`error` "{where} {key!r} {problem}" for the first tensor whose rows are not unit vectors."""
    for key in sorted(tensors):
        problem = unit_rows_problem(tensors[key])
        if problem:
            raise error(f"{where} {key!r} {problem}")


def check_temperature(logit_scale: float) -> float:
    """The base's logit_scale as the text temperature, if finite and positive (NaN would score every image 0,
    a negative one invert every text score)."""
    if not math.isfinite(logit_scale) or logit_scale <= 0:
        raise CheckpointError(f"the base's logit_scale is {logit_scale}, the text temperature; expected a finite positive "
                         "number (set config.text_temperature, or use a base whose weights are finite)")
    return logit_scale


_SCORE_NAMES = {"text_image": "text image scores", "text_patch": "text patch scores",
                "visual_patch": "memory patch scores"}


def _bad_rows(tensors: Sequence[torch.Tensor]) -> list[int]:
    """The batch rows (first axis) where any of `tensors` holds NaN or infinity."""
    bad = torch.zeros(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        bad |= ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    return bad.nonzero().flatten().tolist()


def check_finite_features(features: Sequence[torch.Tensor], pixel_values: torch.Tensor) -> None:
    """Refuse vision features computed as NaN or infinity (pixel values far out of range, or a tower whose
    weights overflow): scored, they would fuse to 0 for every image."""
    rows = _bad_rows(features)
    if rows:
        raise ArgumentError(f"the vision tower computed NaN or infinite features for images {rows} of the batch "
                         f"(pixel_values reach {float(pixel_values.abs().max()):.3g}); expected preprocessed images "
                         "(AnomCLIPProcessor: values within a few units of 0) and a base whose weights are finite")


def check_finite_scores(category: str, **scores: Optional[torch.Tensor]) -> None:
    """Refuse NaN or infinite scores by name instead of returning them (or the 0 that fusion makes of them)."""
    for name, tensor in scores.items():
        if tensor is not None:
            rows = _bad_rows([tensor])
            if rows:
                raise CategoryError(f"category {category!r}: the {_SCORE_NAMES[name]} of images {rows} of the batch are "
                                 "NaN or infinite; no scores are returned (they would read as 'normal')")
