"""The dual-stream vision forward of CLIP Surgery: the original stream and the V-V stream.

Written as our own loop over the stable submodules of transformers' CLIP layers (layer_norm1,
self_attn.{q,k,v,out}_proj, layer_norm2, mlp), so it works across transformers releases whose
attention classes and return types differ. One q/k/v projection per block serves both streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigurationError


@dataclass
class VisionFeatures:
    """Image features of one forward pass, every tensor L2-normalised.

    global_embeds: (B, D) CLIP's image embedding (original stream, CLS, post layernorm, projection).
    patch_embeds: (B, P, D) V-V stream patch tokens through the same post layernorm and projection.
    memory_features: one (B, P, W) raw-width map per memory layer, from the original stream.
    """

    global_embeds: torch.Tensor
    patch_embeds: torch.Tensor
    memory_features: list[torch.Tensor]


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def dual_stream_block(layer: nn.Module, x_ori: torch.Tensor, x_vv: torch.Tensor | None, cls_only: bool = False):
    """Run one CLIP encoder layer on the original stream and, if `x_vv` is given, the V-V stream.

    Returns (x_ori after attention, x_ori after the block, x_vv after the block or None).
    cls_only: return the original stream for the CLS token alone (keys and values still come from every
    token), for the last block when nothing reads its patch tokens: saves the block's MLP on them.
    """
    attention = layer.self_attn
    num_heads = attention.num_heads
    hidden = layer.layer_norm1(x_ori)
    residual, queries = (x_ori[:, :1], hidden[:, :1]) if cls_only else (x_ori, hidden)
    q = _split_heads(attention.q_proj(queries), num_heads)
    k = _split_heads(attention.k_proj(hidden), num_heads)
    v = _split_heads(attention.v_proj(hidden), num_heads)
    # SDPA scales by 1/sqrt(head_dim), the same scale CLIP and the V-V path use.
    x_attn = residual + attention.out_proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
    x_out = x_attn + layer.mlp(layer.layer_norm2(x_attn))
    if x_vv is not None:
        # V-V attention: the values attend to themselves; no MLP on this stream.
        x_vv = x_vv + attention.out_proj(_merge_heads(F.scaled_dot_product_attention(v, v, v)))
    return x_attn, x_out, x_vv


def dual_stream_vision_forward(
    vision_model: nn.Module,
    visual_projection: nn.Module,
    pixel_values: torch.Tensor,
    vv_layers: Sequence[int],
    memory_layers: Sequence[int],
    memory_tap: str = "after_attention",
) -> VisionFeatures:
    """Both streams through a transformers `CLIPVisionTransformer` (``clip.vision_model``).

    The V-V stream starts as a copy of the original stream at the first V-V block (the pre-layernorm
    output when block 0 is one) and is left unchanged by blocks outside `vv_layers`; it never feeds
    back into the original stream.
    """
    vv_set, memory_set = set(vv_layers), set(memory_layers)
    x_ori = vision_model.pre_layrnorm(vision_model.embeddings(pixel_values))
    x_vv = None
    taps: dict[int, torch.Tensor] = {}
    layers = vision_model.encoder.layers
    # Only the CLS token of the last block's output is read (the global feature), unless a memory tap is there.
    cls_only_last = len(layers) - 1 not in memory_set
    for index, layer in enumerate(layers):
        if index in vv_set and x_vv is None:
            x_vv = x_ori
        cls_only = cls_only_last and index == len(layers) - 1
        x_attn, x_ori, x_vv_next = dual_stream_block(layer, x_ori, x_vv if index in vv_set else None, cls_only)
        if index in vv_set:
            x_vv = x_vv_next
        if index in memory_set:
            taps[index] = x_attn if memory_tap == "after_attention" else x_ori
    if x_vv is None:
        raise ConfigurationError(f"vv_layers={list(vv_layers)} selects no vision block")

    def project(tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(visual_projection(vision_model.post_layernorm(tokens)), dim=-1)

    return VisionFeatures(
        global_embeds=project(x_ori[:, 0]),
        patch_embeds=project(x_vv[:, 1:]),
        memory_features=[F.normalize(taps[i][:, 1:], dim=-1) for i in memory_layers],
    )
