"""`anomclip demo`: the whole job on a generated MVTec-shaped category.

Steps: generate a small sample category, build the model from the default backbone (a Hub CLIP,
downloaded once and cached), fit the category from a few normal references with a short two-stage
training run (and leave-one-out thresholds), score the test images and write scores.csv, overlay PNGs,
metrics.json and the adapter.

When the Hub cannot be reached (and the backbone is not cached) the demo says so in one sentence and
runs on a small random CLIP built in code; every output is then labelled a pipeline check, not a
detection result (the visual memory still finds the drawn-in defects, the text branch is noise).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np

from ..data import generate_mvtec_tree, load_split, read_mask
from ..inference.predictor import predict_files
from ..inference.writers import OVERLAY_DIR, SCORES_FILE
from ..io.labels import pipeline_check_fields
from ..metrics import aupro, f1_max, image_auroc, pixel_auroc
from ..model.embedded_base import DEFAULT_BACKBONE, EMBEDDED_BACKBONE, demo_backbone  # noqa: F401 (re-exported)
from ..training.inputs import add_reference_category
from .protocol import stored_threshold_metrics

DEMO_CATEGORY = "widget"
DEFAULT_EPOCHS = 4


def default_output_dir() -> str:
    """A new folder under the current directory, e.g. anomclip-demo-20261126-153012."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, suffix = f"anomclip-demo-{stamp}", 1
    while os.path.exists(candidate):
        suffix += 1
        candidate = f"anomclip-demo-{stamp}-{suffix}"
    return candidate


def run_demo(output_dir: Optional[str] = None, base: Optional[str] = None, shots: int = 2, seed: int = 0,
             batch_size: int = 8, data_root: Optional[str] = None, epochs: int = DEFAULT_EPOCHS,
             progress: bool = True) -> dict:
    """Run the demo into `output_dir` (default: a new folder) and return its metrics.

    The embedded base is saved to `output_dir/base`, so the other commands (train.py, fit, evaluate,
    predict) can be tried on it offline.
    """
    output_dir = output_dir or default_output_dir()
    os.makedirs(output_dir, exist_ok=True)
    data_root = data_root or os.path.join(output_dir, "data")
    if not os.path.isdir(os.path.join(data_root, DEMO_CATEGORY)):
        generate_mvtec_tree(data_root, categories=(DEMO_CATEGORY,), n_train=8, n_test_good=6, n_test_defect=4,
                            image_size=112, seed=seed, exist_ok=True)
    model, pipeline_check = demo_backbone(base, seed)
    if pipeline_check and base is None:
        model.save_pretrained(os.path.join(output_dir, "base"))
    if epochs > 0:
        from ..training import TrainingConfig, train_category

        config = TrainingConfig(progress_bar=progress).with_epochs(epochs)
        train_category(model, DEMO_CATEGORY, os.path.join(output_dir, "training"), dataset="mvtec",
                       data_root=data_root, shots=shots, seed=seed, config=config,
                       adapter_dir=os.path.join(output_dir, "adapter"))
    else:
        add_reference_category(model, "mvtec", data_root, DEMO_CATEGORY, shots, seed)
        model.save_category(os.path.join(output_dir, "adapter"))

    test = load_split("mvtec", data_root, DEMO_CATEGORY, "test")
    paths = list(test["path"])
    columns = {row["path"]: {"label": test.features["label"].int2str(row["label"]), "defect_type": row["defect_type"]}
               for row in test}
    result = predict_files(model, paths, output_dir, root=os.path.join(data_root, DEMO_CATEGORY, "test"),
                           ground_truth={row["path"]: row["mask_path"] for row in test}, extra_columns=columns,
                           batch_size=batch_size, keep_maps=True, progress=progress)  # labels a random base
    metrics = demo_metrics(result, test)
    metrics.update(shots=shots, test_images=len(paths), prompt_training_epochs=epochs,
                   base=base or (EMBEDDED_BACKBONE if pipeline_check else DEFAULT_BACKBONE),
                   pipeline_check=pipeline_check, decision_threshold=result.threshold,
                   pixel_threshold=model.get_category(DEMO_CATEGORY).metadata.get("pixel_threshold"))
    metrics.update(pipeline_check_fields(model))
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    metrics["output_dir"] = output_dir
    return metrics


def demo_metrics(result, test) -> dict:
    """How the stored threshold does on the demo's test split (first: it is the one predict uses), then the
    threshold-free image and pixel metrics at the map resolution and the best possible F1."""
    paths, labels = list(test["path"]), np.array(test["label"])
    maps = np.stack([result.maps[path] for path in paths])
    size = (maps.shape[2], maps.shape[1])
    masks = np.stack([read_mask(row, size=size) for row in test])
    scores = np.array([result.scores[path] for path in paths])
    f1, f1_threshold = f1_max(scores, labels)
    return {**stored_threshold_metrics(scores, labels, result.threshold), "image_auroc": image_auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks),
            "aupro": aupro(maps, masks), "image_f1_max": f1, "f1_max_threshold": f1_threshold,
            "evaluation_resolution": maps.shape[1], "scores_file": SCORES_FILE, "overlay_dir": OVERLAY_DIR}
