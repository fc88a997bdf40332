"""A stored threshold that no score can reach calls every image normal: such an adapter is refused at load.

The bound is checked against scores computed here: the fused score h(a, b) = ab / (a + b) of the most
anomalous terms the CLIP memory and the text can give (1 and 1) is 1/2."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.decisions import max_reachable_score
from anomclip_hf.model.scoring import harmonic_fusion
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 30, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_clip):
    """A base and a coreset adapter (memory_size=100 of 3 x 225 patch rows) with a leave-one-out threshold."""
    root = tmp_path_factory.mktemp("reachable")
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    references = [_image(seed) for seed in range(3)]
    model.add_category("widget", reference_images=references, memory_size=100, seed=1)
    model.estimate_thresholds(references)
    model.save_pretrained(root / "base")
    model.save_category(str(root / "adapter"))
    record = json.loads((root / "adapter" / "category.json").read_text())
    assert record["memory"]["coreset"] is not None
    return root


def test_the_bound_is_the_fusion_of_the_highest_terms():
    top = torch.tensor([1.0])
    assert max_reachable_score("clip") == float(harmonic_fusion(top, top))
    assert max_reachable_score("dino") == pytest.approx(float(harmonic_fusion(2 * top, top)))
    assert max_reachable_score(None) == 1.0


@pytest.mark.parametrize("field, value", [("decision_threshold", 0.9), ("decision_threshold", 2.0),
                                          ("pixel_threshold", 0.51)])
def test_a_coreset_adapter_with_an_unreachable_threshold_is_refused_at_load(saved, tmp_path, field, value):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(saved / "adapter", adapter)
    record = json.loads((adapter / "category.json").read_text())
    record[field] = value
    (adapter / "category.json").write_text(json.dumps(record))
    model = AnomCLIPModel.from_base(str(saved / "base"))
    with pytest.raises(ValueError, match=rf"field '{field}' is {value}; expected at most 0.5, the highest score a "
                                         "category with the CLIP memory can give"):
        model.load_category(str(adapter))


def test_a_reachable_threshold_loads_and_scores_at_most_the_bound(saved):
    model = AnomCLIPModel.from_base(str(saved / "base"))
    model.load_category(str(saved / "adapter"))
    threshold = model.get_category("widget").metadata["decision_threshold"]
    assert 0 < threshold <= 0.5
    with torch.no_grad():
        scores = model(torch.randn(4, 3, 30, 30) * 3).image_scores
    assert float(scores.max()) <= 0.5
