"""How tests/golden/dino/ was made (run by hand only; tests read the files, never run this).

AnomalyDINO's reference code (github dammsi/AnomalyDINO, commit b3435f0) on tiny random DINOv2 weights, CPU,
float32: its own `run_anomaly_detection` scores a small MVTec-shaped tree with masking and rotation off, exact
CPU faiss search and knn_metric "L2_normalized" (its cosine distance). Its DINOv2 is the original ViT of
github facebookresearch/dinov2 (commit b8931f7), built with the interpolation settings of the released hub
models and given the weights of the transformers folders stored here (converted key by key below).

    python tests/golden/dino/make_dino_golden.py --weights     # 1. the tiny transformers folders (seeded)
    python tests/golden/dino/make_dino_golden.py --images      # 2. the images (the package's renderer)
    PYTHONPATH=<opencv, tifffile, matplotlib, faiss> python tests/golden/dino/make_dino_golden.py \
        --reference ANOMALYDINO_CHECKOUT DINOV2_CHECKOUT         # 3. reference.json + reference.safetensors

Step 3 imports both checkouts (nothing of them is copied here): it replaces `torch.hub.load` (no network) by
the tiny original ViT and `torch.cuda.synchronize` (CPU run), and otherwise calls their code unchanged.
Stored: per variant and test image, AnomalyDINO's image score (mean of the top 1 % patch distances), its
patch distances (the .npy it saves) and its anomaly map (the .tiff it saves: cv2 bilinear resize to the image
size, scipy Gaussian sigma 4), the map every MAP_STRIDE-th pixel in each direction to keep the file small.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
VARIANTS = {"tiny_dinov2": 0, "tiny_dinov2_reg": 2}  # folder -> register tokens
IMAGE_SIZE = 112  # the test images (square: AnomalyDINO's shortest-edge resize is a plain resize, here up)
RESOLUTION = 224  # AnomalyDINO's --resolution = our memory_image_size: a 16 x 16 patch grid
SHOTS = 2
MAP_STRIDE = 4
CATEGORY = "widget"
TEST_IMAGES = {"good/000.png": ("test0", ()), "scratch/000.png": ("test1", ("scratch",)),
               "blob/000.png": ("test2", ("blob",))}


def write_weights() -> None:
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    sizes = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, image_size=70,
                 patch_size=14)  # a 5 x 5 position table: the 16 x 16 grid interpolates it
    for folder, registers in VARIANTS.items():
        model = (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**sizes, num_register_tokens=registers))
                 if registers else Dinov2Model(Dinov2Config(**sizes)))
        generator = torch.Generator().manual_seed(registers)
        with torch.no_grad():  # every weight random (LayerNorms and layer scales around 1), tokens small
            for name, parameter in model.named_parameters():
                scale = 0.02 if ("position" in name or "token" in name) else 0.2
                centre = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "lambda1")) else 0.0
                parameter.copy_(centre + scale * torch.randn(parameter.shape, generator=generator))
        model.save_pretrained(HERE / folder)
        BitImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                          resample=3).save_pretrained(HERE / folder)


def write_images() -> None:
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from anomclip_hf.data.synthetic_images import render_normal, render_sample

    images = HERE / "images"
    images.mkdir(exist_ok=True)
    for index in range(SHOTS):
        Image.fromarray(render_normal(CATEGORY, f"train{index}", IMAGE_SIZE)).save(images / f"train_{index}.png")
    for key, (image_id, defects) in TEST_IMAGES.items():
        sample = render_sample(CATEGORY, image_id, IMAGE_SIZE, defects)
        Image.fromarray(sample.image).save(images / f"test_{key.split('/')[0]}.png")


def _tree(root: Path) -> None:
    """The images as the MVTec-shaped tree AnomalyDINO reads."""
    for index in range(SHOTS):
        target = root / CATEGORY / "train" / "good" / f"{index:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "images" / f"train_{index}.png", target)
    for key in TEST_IMAGES:
        target = root / CATEGORY / "test" / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "images" / f"test_{key.split('/')[0]}.png", target)


def _original_state_dict(folder: Path, layers: int, registers: int) -> dict:
    """The transformers checkpoint's tensors under the original DINOv2 names (q, k, v fused into qkv)."""
    from safetensors.torch import load_file

    hf = load_file(folder / "model.safetensors")
    state = {"cls_token": hf["embeddings.cls_token"], "pos_embed": hf["embeddings.position_embeddings"],
             "mask_token": hf["embeddings.mask_token"],
             "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
             "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    if registers:
        state["register_tokens"] = hf["embeddings.register_tokens"]
    for i in range(layers):
        layer, attention = f"encoder.layer.{i}.", f"encoder.layer.{i}.attention."
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [hf[f"{attention}attention.{name}.{kind}"] for name in ("query", "key", "value")])
            state[f"blocks.{i}.attn.proj.{kind}"] = hf[f"{attention}output.dense.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                state[f"blocks.{i}.{name}.{kind}"] = hf[f"{layer}{name}.{kind}"]
        state[f"blocks.{i}.ls1.gamma"] = hf[f"{layer}layer_scale1.lambda1"]
        state[f"blocks.{i}.ls2.gamma"] = hf[f"{layer}layer_scale2.lambda1"]
    return state


def _original_vit(folder: Path):
    from dinov2.models.vision_transformer import (
        DinoVisionTransformer,  # the original DINOv2 ViT
    )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    registers = getattr(config, "num_register_tokens", 0)
    # The released hub models: plain ones interpolate with offset 0.1, no antialias; "_reg" ones offset 0, antialias.
    vit = DinoVisionTransformer(img_size=config.image_size, patch_size=config.patch_size,
                                embed_dim=config.hidden_size, depth=config.num_hidden_layers,
                                num_heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio, init_values=1.0,
                                block_chunks=0, num_register_tokens=registers,
                                interpolate_antialias=bool(registers), interpolate_offset=0.0 if registers else 0.1)
    state = _original_state_dict(folder, config.num_hidden_layers, registers)
    state["mask_token"] = state["mask_token"].reshape(vit.mask_token.shape)
    vit.load_state_dict(state, strict=True)
    return vit.eval()


def run_reference(anomalydino: str, dinov2: str) -> None:
    import tifffile
    from safetensors.torch import save_file

    sys.path[:0] = [anomalydino, dinov2]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # a CPU run
    from src.backbones import get_model
    from src.detection import run_anomaly_detection

    records, arrays = {}, {}
    with tempfile.TemporaryDirectory() as work:
        _tree(Path(work) / "data")
        for folder in VARIANTS:
            vit = _original_vit(HERE / folder)
            torch.hub.load = lambda *args, **kwargs: vit  # its wrapper calls torch.hub.load(repo, name)
            model = get_model("dinov2_tiny", "cpu", smaller_edge_size=RESOLUTION)
            out = Path(work) / folder
            anomalies = {CATEGORY: sorted(k.split("/")[0] for k in TEST_IMAGES if not k.startswith("good"))}
            scores, _, _ = run_anomaly_detection(
                model, CATEGORY, str(Path(work) / "data"), SHOTS, anomalies, str(out), save_examples=False,
                masking=False, mask_ref_images=False, rotation=False, knn_metric="L2_normalized", knn_neighbors=1,
                faiss_on_cpu=True, seed=0, save_patch_dists=True, save_tiffs=True)
            records[folder] = {}
            for key in TEST_IMAGES:
                stem = out / "anomaly_maps" / "seed=0" / CATEGORY / "test" / os.path.splitext(key)[0]
                name = key.split("/")[0]
                records[folder][name] = float(scores[key])
                arrays[f"{folder}.{name}.patch_distances"] = torch.from_numpy(
                    np.load(f"{stem}.npy").astype(np.float32))
                arrays[f"{folder}.{name}.map"] = torch.from_numpy(
                    tifffile.imread(f"{stem}.tiff").astype(np.float32)[::MAP_STRIDE, ::MAP_STRIDE].copy())
    save_file(arrays, HERE / "reference.safetensors")
    with open(HERE / "reference.json", "w", encoding="utf-8") as handle:
        json.dump({"made_by": "AnomalyDINO run_anomaly_detection (dammsi/AnomalyDINO b3435f0), CPU float32",
                   "resolution": RESOLUTION, "shots": SHOTS, "image_size": IMAGE_SIZE, "map_stride": MAP_STRIDE,
                   "reference_images": [f"train_{i}.png" for i in range(SHOTS)],
                   "image_scores": records}, handle, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="store_true")
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--reference", nargs=2, metavar=("ANOMALYDINO", "DINOV2"))
    args = parser.parse_args()
    if args.weights:
        write_weights()
    if args.images:
        write_images()
    if args.reference:
        run_reference(*args.reference)
