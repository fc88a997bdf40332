"""Files saved by earlier releases keep loading, and score as they did: a base (config.json + weights +
tokenizer) and two category adapters written by anomclip-hf 0.1.0 (tests/fixtures/make_saved_fixtures.py),
before the package was arranged by job. Their scores at save time are in scores.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anomclip_hf
from anomclip_hf import AnomCLIPModel, AnomCLIPProcessor

SAVED = sorted((Path(__file__).resolve().parents[1] / "fixtures").glob("saved_by_*"))


@pytest.mark.parametrize("folder", SAVED, ids=[path.name for path in SAVED])
def test_saved_base_and_adapters_load_and_score_as_saved(folder):
    expected = json.loads((folder / "scores.json").read_text())
    model = AnomCLIPModel.from_pretrained(folder / "base")
    processor = AnomCLIPProcessor.from_model(model)
    images = [Image.open(folder / f"test_{index}.png").convert("RGB") for index in range(2)]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    for name, saved in expected.items():
        model.load_category(str(folder / name))
        with torch.no_grad():
            output = model(pixel_values, output_size=30)
        np.testing.assert_allclose(output.image_scores.numpy(), saved["image_scores"], atol=1e-6)
        np.testing.assert_allclose(output.anomaly_maps.sum(dim=(1, 2)).numpy(), saved["map_sums"], rtol=1e-5)
    assert sorted(model.categories) == sorted(expected)


def test_saved_base_loads_through_automodel():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(SAVED[0] / "base")
    assert isinstance(model, AnomCLIPModel)
    assert anomclip_hf.__version__ >= "0.1.0"
