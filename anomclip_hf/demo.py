"""`anomclip demo`: the whole job on a generated MVTec-shaped category, offline by default.

Without `--base`, the backbone is a small random CLIP built in code (no download possible or needed):
the visual memory still finds the drawn-in defects, the text branch is meaningless. Pass
`--base openai/clip-vit-base-patch16` (or a converted PromptAD backbone) for real weights.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Optional

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel

from .data import generate_mvtec_tree, load_split, read_mask
from .inference import score_images
from .metrics import aupro, image_auroc, pixel_auroc
from .modeling_anomclip import AnomCLIPModel
from .training.inputs import add_reference_category
from .tokenization import build_offline_clip_tokenizer, open_clip_bpe_path
from .visualization import anomaly_overlay
from .image_io import load_image

DEMO_CATEGORY = "widget"


def embedded_demo_model(seed: int = 0) -> AnomCLIPModel:
    """A small random CLIP (ViT 112 px, patch 8, 4 layers) with an offline tokenizer."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=open_clip_bpe_path() is not None)
    config = CLIPConfig(
        projection_dim=64,
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu"),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                           image_size=112, patch_size=8, hidden_act="gelu"),
    )
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    clip.config.name_or_path = "anomclip-demo-random"
    return AnomCLIPModel.from_clip(clip, tokenizer=tokenizer)


def run_demo(output_dir: str, base: Optional[str] = None, shots: int = 2, seed: int = 0, batch_size: int = 8,
             data_root: Optional[str] = None, epochs: int = 0, progress: bool = True) -> dict:
    """Generate (or reuse) a category, build its memory from `shots` normal images (and train its prompts
    for `epochs` epochs, two-stage), score the test split, write scores.csv, heat-map PNGs, the category
    adapter and metrics.json; return the metrics. The embedded base is saved to `output_dir/base`, so the
    other commands (train.py, fit, evaluate, predict) can be tried on it."""
    os.makedirs(output_dir, exist_ok=True)
    data_root = data_root or os.path.join(output_dir, "data")
    if not os.path.isdir(os.path.join(data_root, DEMO_CATEGORY)):
        generate_mvtec_tree(data_root, categories=(DEMO_CATEGORY,), n_train=8, n_test_good=6, n_test_defect=4,
                            image_size=112, seed=seed, exist_ok=True)
    if base is None:
        model = embedded_demo_model(seed)
        model.save_pretrained(os.path.join(output_dir, "base"))
    else:
        model = AnomCLIPModel.from_base(base)
    test = load_split("mvtec", data_root, DEMO_CATEGORY, "test")
    if epochs > 0:
        from .training import TrainingConfig, train_category

        config = TrainingConfig(progress_bar=progress).with_epochs(epochs)
        train_category(model, DEMO_CATEGORY, os.path.join(output_dir, "training"), dataset="mvtec",
                       data_root=data_root, shots=shots, seed=seed, config=config)
    else:
        add_reference_category(model, "mvtec", data_root, DEMO_CATEGORY, shots, seed)

    paths, labels = test["path"], np.array(test["label"])
    size = model.config.image_size
    maps, scores = np.zeros((len(paths), size, size), np.float32), np.zeros(len(paths), np.float32)
    heatmap_dir = os.path.join(output_dir, "heatmaps")
    os.makedirs(heatmap_dir, exist_ok=True)
    for batch in score_images(model, paths, batch_size=batch_size, progress=progress):
        for offset, index in enumerate(batch.indices):
            scores[index], maps[index] = batch.image_scores[offset], batch.anomaly_maps[offset]
    vmax = float(maps.max())  # one colour scale for all pictures, so they compare
    for index, path in enumerate(paths):
        name = f"{test[index]['defect_type']}_{os.path.splitext(os.path.basename(path))[0]}.png"
        anomaly_overlay(load_image(path).resize((size, size)), maps[index], vmax=vmax).save(
            os.path.join(heatmap_dir, name))
    masks = np.stack([read_mask(test[i], size=(size, size)) for i in range(len(test))])
    metrics = {"image_auroc": image_auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks),
               "aupro": aupro(maps, masks), "shots": shots, "test_images": len(paths),
               "base": base or "embedded random CLIP (offline demo)", "evaluation_resolution": size,
               "prompt_training_epochs": epochs}
    with open(os.path.join(output_dir, "scores.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "defect_type", "image_score"])
        for index, path in enumerate(paths):
            writer.writerow([path, test.features["label"].int2str(int(labels[index])), test[index]["defect_type"],
                             f"{scores[index]:.6f}"])
    with open(os.path.join(output_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
    model.save_category(os.path.join(output_dir, "adapter"))
    return metrics
