"""The DINOv2 memory's cost (issue 25), for bench_inference.py --dino: fused / CLIP-only latency in one run.

The CLIP-only model and each fused model wrap the same paper-shaped CLIP (random weights); the fused ones add
a random DINOv2 of facebook/dinov2-small or -base shape (patch 14, a 518 px position table) at the memory's
default 448 px. Every model scores against k reference images; the calls are interleaved, figures medians.
"""

from __future__ import annotations

import copy
import tempfile

import torch
from _common import interleaved_times, median, random_pixels
from transformers import Dinov2Config, Dinov2Model

from anomclip_hf import AnomCLIPModel

DINO_SHAPES = {"small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
               "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)}


def dino_latency(model: AnomCLIPModel, shapes, batch: int, k: int, repeats: int, device: str) -> tuple[dict, list]:
    """{name: median seconds} and printed lines of the CLIP-only forward and of each fused one."""
    models = {"clip-only": model}
    with tempfile.TemporaryDirectory() as folder:
        for shape in shapes:
            torch.manual_seed(0)
            Dinov2Model(Dinov2Config(image_size=518, patch_size=14, **DINO_SHAPES[shape])).save_pretrained(
                f"{folder}/{shape}")
            models[f"fused dinov2-{shape}"] = AnomCLIPModel.from_clip(
                model.clip, tokenizer=copy.deepcopy(model.tokenizer), memory_backbone=f"{folder}/{shape}").to(device)
    inputs = {}
    for name, candidate in models.items():
        size = candidate.config.memory_image_size
        references = {"pixel_values": random_pixels(k, seed=100).to(device)}
        queries = {"pixel_values": random_pixels(batch, seed=2).to(device)}
        if candidate.has_dino_memory:
            references["memory_pixel_values"] = random_pixels(k, size, seed=101).to(device)
            queries["memory_pixel_values"] = random_pixels(batch, size, seed=3).to(device)
        candidate.add_category("bench", reference_images=references)
        with torch.inference_mode():
            candidate.text_prototypes("bench")
        inputs[name] = queries

    def forward(name):
        with torch.inference_mode():
            return models[name](**inputs[name], category="bench", output_size=400)

    times = interleaved_times({name: (lambda name=name: forward(name)) for name in models}, repeats, device)
    medians = {name: median(values) for name, values in times.items()}
    base = medians["clip-only"]
    lines = [f"DINOv2 memory (448 px, k = {k}, batch {batch}): CLIP-only {base * 1e3:.1f} ms"]
    lines += [f"  {name}: {seconds * 1e3:.1f} ms = {seconds / base:.2f}x CLIP-only"
              for name, seconds in medians.items() if name != "clip-only"]
    return medians, lines
