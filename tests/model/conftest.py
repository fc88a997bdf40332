"""Fixtures of the model tests: a saved good adapter, a model with it loaded, a saved base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_setup import fresh_model, scores_of


@pytest.fixture(scope="module")
def good_adapter(tiny_clip, tmp_path_factory) -> Path:
    """A learned category with a 3-shot memory bank and a leave-one-out threshold."""
    model = fresh_model(tiny_clip)
    generator = torch.Generator().manual_seed(0)
    references = torch.randn(3, 3, 30, 30, generator=generator)
    model.add_category("widget", reference_images=references, learned_prompts=True, seed=2)
    model.estimate_thresholds(references)
    return Path(model.save_category(tmp_path_factory.mktemp("good") / "adapter"))


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def loaded(tiny_clip, good_adapter, pixel_values):
    """A model with the good "widget" loaded, and its scores."""
    model = fresh_model(tiny_clip)
    model.load_category(str(good_adapter))
    return model, scores_of(model, pixel_values)


@pytest.fixture(scope="module")
def base_folder(tiny_clip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "base"
    fresh_model(tiny_clip).save_pretrained(folder)
    return folder
