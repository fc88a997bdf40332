"""A saved tiny base with two fitted-looking categories and a folder of test images, for the scale and serve
tests (Ray actors, accelerate processes and server workers load them from disk, as users do)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from anomclip_hf.model.modeling_anomclip import AnomCLIPModel
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer


def random_image(seed: int, size=(30, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def write_scale_workspace(root: Path, tiny_clip) -> SimpleNamespace:
    """root/base, root/widget and root/gadget (adapters with a memory of 3 references and leave-one-out
    thresholds), root/images: 7 PNGs (two in a sub-folder) + broken.png (not an image) + notes.txt."""
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    for name, first in (("widget", 0), ("gadget", 50)):
        references = [random_image(first + seed) for seed in range(3)]
        model.add_category(name, reference_images=references, learned_prompts=True, seed=3)
        with torch.no_grad():
            vectors = model.prompt_parameters()[0]
            vectors.add_(0.05 * torch.randn(vectors.shape, generator=torch.Generator().manual_seed(first)))
        model.clear_prototype_cache()
        model.estimate_thresholds(references, category=name)
        model.save_category(str(root / name), name)
    model.save_pretrained(root / "base")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    paths = []
    for seed in range(7):
        path = images / ("sub" if seed % 3 == 2 else "") / f"{seed:03d}.png"
        random_image(10 + seed, (40 + seed, 36)).save(path)
        paths.append(path)
    (images / "broken.png").write_bytes(b"not a png at all")
    (images / "notes.txt").write_text("not an image")
    return SimpleNamespace(root=root, base=root / "base", widget=root / "widget", gadget=root / "gadget",
                           images=images, good=sorted(paths), broken=images / "broken.png")
