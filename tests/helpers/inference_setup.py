"""Inputs of the inference tests: random images, the hostile files of a folder, a category exported to ONNX."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from anomclip_hf.cli.main import main
from anomclip_hf.model.modeling_anomclip import AnomCLIPModel
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer


def random_image(seed: int, size=(30, 30)) -> Image.Image:
    """size as (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """The hostile files of a folder, file name -> what is wrong: a corrupt TIFF, PPM bytes named .png, a
    truncated PNG, a zero-byte file and a 65 KB PNG whose text chunk inflates to 64 MiB (Pillow refuses it
    with a ValueError, not an OSError)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiff = io.BytesIO()
    random_image(90, (32, 32)).save(tiff, format="TIFF")
    data = bytearray(tiff.getvalue())
    data[8:] = bytes(len(data) - 8)  # the header survives, the directory and strips are zeros
    (folder / "corrupt.tif").write_bytes(bytes(data))
    ppm = io.BytesIO()
    random_image(91, (32, 32)).save(ppm, format="PPM")
    (folder / "ppm_bytes.png").write_bytes(ppm.getvalue())
    png = io.BytesIO()
    random_image(92, (64, 64)).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    small = io.BytesIO()
    random_image(93, (8, 8)).save(small, format="PNG")
    text = b"comment\x00\x00" + zlib.compress(bytes(64 * 2 ** 20), 9)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    (folder / "text_bomb.png").write_bytes(small.getvalue()[:33] + chunk + small.getvalue()[33:])  # after IHDR
    return {"corrupt.tif": "TIFF", "ppm_bytes.png": "PPM", "truncated.png": "truncated", "empty.png": "zero bytes",
            "text_bomb.png": "text chunk past Pillow's limit"}


def save_trained_category(root: Path, tiny_clip) -> AnomCLIPModel:
    """A trained-looking "widget" (a memory of 3 references, learned prompt vectors moved off their start,
    leave-one-out thresholds), saved as root/base and root/adapter."""
    model = AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    references = [random_image(seed) for seed in range(3)]
    model.add_category("widget", reference_images=references, learned_prompts=True, seed=3)
    with torch.no_grad():
        vectors = model.prompt_parameters()[0]
        vectors.add_(0.05 * torch.randn(vectors.shape, generator=torch.Generator().manual_seed(1)))
    model.clear_prototype_cache()
    model.estimate_thresholds(references)
    model.save_pretrained(root / "base")
    model.save_category(str(root / "adapter"))
    return model


def exported_category(root: Path, tiny_clip) -> SimpleNamespace:
    """A category with a memory and leave-one-out thresholds, as base + adapter folders, exported to ONNX;
    `good`: a folder of 7 images of several sizes (sub-folder included)."""
    save_trained_category(root, tiny_clip)
    good = root / "good"
    (good / "sub").mkdir(parents=True)
    for seed in range(7):
        random_image(10 + seed, (40 + 3 * seed, 36)).save(good / ("sub" if seed % 3 == 0 else "") / f"{seed:03d}.png")
    assert main(["export", "--base", str(root / "base"), "--category", str(root / "adapter"),
                 "--output", str(root / "widget.onnx")]) == 0
    loaded = AnomCLIPModel.from_base(str(root / "base"))
    loaded.load_category(str(root / "adapter"))
    return SimpleNamespace(root=root, base=root / "base", adapter=root / "adapter", onnx=root / "widget.onnx",
                           model=loaded, good=good)
