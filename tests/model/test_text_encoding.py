"""Our causal text loop against CLIPModel.get_text_features, and prompt-batch truncation."""

import torch

from anomclip_hf.model.text_encoding import (
    encode_text_embeddings,
    eos_positions_of,
    truncate_to_longest,
)


def _hf_text_features(clip, input_ids):
    out = clip.get_text_features(input_ids=input_ids)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def test_plain_prompts_equal_get_text_features(tiny_model):
    clip, tokenizer = tiny_model.clip, tiny_model.tokenizer
    prompts = ["a photo of a bottle.", "damaged bottle", "x", "a much longer prompt about a hazelnut with a crack"]
    ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    eos = tiny_model.text_eos_token_id
    with torch.no_grad():
        ours = encode_text_embeddings(clip.text_model, clip.text_projection,
                                      clip.text_model.embeddings.token_embedding(ids), ids, eos)
        reference = _hf_text_features(clip, ids)
        short = truncate_to_longest(ids, eos)
        truncated = encode_text_embeddings(clip.text_model, clip.text_projection,
                                           clip.text_model.embeddings.token_embedding(short), short, eos)
    assert short.shape[1] < 77 and short.shape[1] == int(eos_positions_of(ids, eos).max()) + 1
    assert (ours - reference).abs().max() < 1e-5
    assert (truncated - ours).abs().max() < 1e-5


def test_eos_pooling_ignores_larger_added_token_ids(tiny_model):
    """argmax(ids) would pick an added prompt token (its id is above EOS); we pool at the EOS id."""
    ids = tiny_model.tokenize_prompts(["<img_n0_0> bottle."])
    eos = tiny_model.text_eos_token_id
    assert int(ids.max()) > eos
    position = int(eos_positions_of(ids, eos)[0])
    assert int(ids[0, position]) == eos and int(ids.argmax()) != position


def test_rows_without_eos_are_rejected():
    import pytest

    with pytest.raises(ValueError, match="no EOS token"):
        eos_positions_of(torch.tensor([[1, 2, 3], [1, 9, 0]]), eos_token_id=9)
