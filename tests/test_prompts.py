"""Class names, manual phrases and the semantic-concatenation prompt layout."""

import pytest

from anomclip_hf import AnomCLIPConfig
from anomclip_hf.prompts import (CATEGORY_PHRASES, GENERIC_PHRASES, MVTEC_CATEGORIES, VISA_CATEGORIES,
                                 build_head_prompts, class_name_for, learned_pairs, manual_phrases)

from conftest import tiny_clip_config


def test_class_names():
    assert class_name_for("pcb3") == "printed circuit board"
    assert class_name_for("macaroni2") == "macaroni"
    assert class_name_for("chewinggum") == "chewing gum"
    assert class_name_for("metal_nut") == "metal nut"
    assert class_name_for("/data/mvtec/pipe_fryum/") == "pipe fryum"


def test_phrase_lists():
    assert all(c in CATEGORY_PHRASES for c in MVTEC_CATEGORIES + VISA_CATEGORIES)
    assert len(GENERIC_PHRASES) == 8
    bottle = manual_phrases("bottle")
    assert len(bottle) == 11 and bottle[-1] == "{} with contamination"
    assert manual_phrases("my_widget") == list(GENERIC_PHRASES)  # unknown: generic only, no KeyError
    assert manual_phrases("bottle", use_category_phrases=False) == list(GENERIC_PHRASES)
    assert manual_phrases("x", extra_phrases=["{} with a dent"])[-1] == "{} with a dent"
    for bad in ("dent", "{} {}", "{0.__class__} dent", "{1} dent", "{} dent }"):
        with pytest.raises(ValueError, match=r"expected exactly one '\{\}'"):
            manual_phrases("x", extra_phrases=[bad])


def test_cross_product_covers_every_pair():
    for n, l in ((3, 4), (2, 4), (1, 4), (4, 6)):
        pairs = learned_pairs(n, l)
        assert len(pairs) == n * l and len(set(pairs)) == n * l
    assert learned_pairs(3, 4)[:5] == [(0, 0), (1, 1), (2, 2), (0, 3), (1, 0)]  # reference order


@pytest.mark.parametrize("position", ["suffix", "before_class"])
def test_head_prompts_layout(position):
    config = AnomCLIPConfig(clip_config=tiny_clip_config(), anomaly_token_position=position)
    image = build_head_prompts(config, "image", "bottle", manual_phrases("bottle"))
    pixel = build_head_prompts(config, "pixel", "bottle", manual_phrases("bottle"))
    assert (len(image.normal), len(image.manual), len(image.learned)) == (3, 33, 12)
    assert (len(pixel.normal), len(pixel.manual), len(pixel.learned)) == (1, 11, 4)
    context = "<img_n0_0><img_n0_1><img_n0_2><img_n0_3>"
    assert image.normal[0] == f"{context} bottle."
    assert image.manual[0] == f"{context} damaged bottle." and image.manual[4].startswith("<img_n1_0>")
    expected = f"{context} bottle <img_a0_0>." if position == "suffix" else f"{context} <img_a0_0> bottle."
    assert image.learned[0] == expected
    assert pixel.normal[0].startswith("<pix_n0_0>")
    assert len(config.prompt_token_names) == (12 + 4) + (4 + 4)
