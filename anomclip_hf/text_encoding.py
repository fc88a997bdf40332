"""The CLIP text tower driven by our own causal loop, on token embeddings with substituted rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vv_attention import _merge_heads, _split_heads


def truncate_to_longest(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Cut a (B, 77) prompt batch after its longest prompt's EOS.

    Causal attention lets EOS see only earlier tokens, so the cut changes no feature.
    """
    eos_positions = eos_positions_of(input_ids, eos_token_id)
    return input_ids[:, : int(eos_positions.max()) + 1]


def eos_positions_of(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """First position of the EOS id in every row (not argmax(ids): added tokens have larger ids)."""
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(dim=1).all()):
        missing = (~is_eos.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"prompt rows {missing} contain no EOS token (id {eos_token_id})")
    return is_eos.int().argmax(dim=1)


def encode_text_embeddings(
    text_model: nn.Module,
    text_projection: nn.Module,
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    eos_token_id: int,
) -> torch.Tensor:
    """Unnormalised text features (B, D) of token embeddings (B, T, W) through a `CLIPTextTransformer`.

    `input_ids` only locates the EOS token; the embeddings may hold learned rows anywhere.
    """
    length = inputs_embeds.shape[1]
    positions = text_model.embeddings.position_embedding.weight[:length]
    hidden = inputs_embeds + positions.to(inputs_embeds.dtype)
    for layer in text_model.encoder.layers:
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        q, k, v = (_split_heads(proj(normed), attention.num_heads)
                   for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        hidden = hidden + attention.out_proj(_merge_heads(attended))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    hidden = text_model.final_layer_norm(hidden)
    eos = eos_positions_of(input_ids, eos_token_id)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]
    return text_projection(pooled)
