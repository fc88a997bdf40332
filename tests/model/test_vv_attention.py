"""The dual-stream vision forward against independent computations from the layer weights."""

import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from anomclip_hf.model.vv_attention import dual_stream_vision_forward


def _layer_norm(x, module):
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)


def _linear(x, module):
    return x @ module.weight.T + module.bias


def _attention(q, k, v, heads):
    # Explicit multi-head softmax(q k^T / sqrt(d)) v with python-level head loop: no SDPA, no reshapes shared
    # with the implementation under test.
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(-1, -2) / d ** 0.5, dim=-1)
        outs.append(weights @ v[..., sl])
    return torch.cat(outs, dim=-1)


def _reference_streams(clip, pixel_values):
    vision = clip.vision_model
    config = clip.config.vision_config
    patches = F.conv2d(pixel_values, vision.embeddings.patch_embedding.weight, stride=config.patch_size)
    tokens = patches.flatten(2).transpose(1, 2)
    cls = vision.embeddings.class_embedding.expand(tokens.shape[0], 1, -1)
    x = torch.cat([cls, tokens], dim=1) + vision.embeddings.position_embedding.weight
    x_ori = _layer_norm(x, vision.pre_layrnorm)
    x_vv = x_ori
    after_attention, block_outputs = [], []
    for layer in vision.encoder.layers:
        attn = layer.self_attn
        h = _layer_norm(x_ori, layer.layer_norm1)
        q, k, v = _linear(h, attn.q_proj), _linear(h, attn.k_proj), _linear(h, attn.v_proj)
        heads = config.num_attention_heads
        x_vv = x_vv + _linear(_attention(v, v, v, heads), attn.out_proj)
        x_ori = x_ori + _linear(_attention(q, k, v, heads), attn.out_proj)
        after_attention.append(x_ori)
        hidden = _linear(_layer_norm(x_ori, layer.layer_norm2), layer.mlp.fc1)
        x_ori = x_ori + _linear(F.gelu(hidden), layer.mlp.fc2)
        block_outputs.append(x_ori)

    def project(t):
        return F.normalize(_layer_norm(t, vision.post_layernorm) @ clip.visual_projection.weight.T, dim=-1)

    return project(x_vv[:, 1:]), after_attention, block_outputs


def test_vv_stream_matches_direct_recomputation(tiny_clip):
    pixel_values = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        features = dual_stream_vision_forward(tiny_clip.vision_model, tiny_clip.visual_projection, pixel_values,
                                              vv_layers=[0, 1], memory_layers=[0, 1])
        patch_ref, after_attention, _ = _reference_streams(tiny_clip, pixel_values)
    assert features.patch_embeds.shape == (3, 225, 16)
    assert (features.patch_embeds - patch_ref).abs().max() < 1e-5
    for tap, ref in zip(features.memory_features, after_attention):
        assert tap.shape == (3, 225, 32)
        assert (tap - F.normalize(ref[:, 1:], dim=-1)).abs().max() < 1e-5


def test_original_stream_equals_clip_vision_model(tiny_clip):
    pixel_values = torch.randn(2, 3, 30, 30)
    vision = CLIPVisionModel(tiny_clip.config.vision_config)
    # transformers 5 flattened CLIPVisionModel; 4.x nests the transformer under .vision_model
    getattr(vision, "vision_model", vision).load_state_dict(tiny_clip.vision_model.state_dict())
    with torch.no_grad():
        features = dual_stream_vision_forward(tiny_clip.vision_model, tiny_clip.visual_projection, pixel_values,
                                              vv_layers=[0, 1], memory_layers=[0, 1], memory_tap="block_output")
        hf = vision(pixel_values=pixel_values, output_hidden_states=True)
        image_embeds = tiny_clip.visual_projection(hf.pooler_output)
    assert (features.global_embeds - F.normalize(image_embeds, dim=-1)).abs().max() < 1e-5
    for index, tap in enumerate(features.memory_features):
        expected = F.normalize(hf.hidden_states[index + 1][:, 1:], dim=-1)
        assert (tap - expected).abs().max() < 1e-5


def test_vv_stream_only_on_selected_blocks(tiny_clip):
    """A V-V stream over the last block only starts from the original stream entering that block."""
    pixel_values = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        last_only = dual_stream_vision_forward(tiny_clip.vision_model, tiny_clip.visual_projection, pixel_values,
                                               vv_layers=[1], memory_layers=[0])
        _, _, block_outputs = _reference_streams(tiny_clip, pixel_values)
        layer = tiny_clip.vision_model.encoder.layers[1]
        h = _layer_norm(block_outputs[0], layer.layer_norm1)
        v = _linear(h, layer.self_attn.v_proj)
        x_vv = block_outputs[0] + _linear(_attention(v, v, v, 4), layer.self_attn.out_proj)
        expected = F.normalize(tiny_clip.visual_projection(tiny_clip.vision_model.post_layernorm(x_vv[:, 1:])), dim=-1)
    assert (last_only.patch_embeds - expected).abs().max() < 1e-5
