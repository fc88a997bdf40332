"""The JSON written beside an exported .onnx: what a caller needs besides the graph (torch-free).

    model.onnx        pixel_values (B, 3, S, S) float32 -> image_scores (B,), anomaly_maps (B, H, W)
    tiled category:   pixel_values (T, 3, S, S) of T tiles -> patch_scores (T, P), memory_patch_scores (T, P),
                      text_image_scores (T,); the sidecar's "tiling" says how to cut and stitch
    model.onnx.json   preprocessing (size, mean, std, resample), output size, decision and pixel thresholds,
                      the category record (as its category.json) and the base model's identity
"""

from __future__ import annotations

import json
import os

SIDECAR_FORMAT = "anomclip-onnx"
SIDECAR_VERSION = 1
INPUT_NAME = "pixel_values"
MEMORY_INPUT_NAME = "memory_pixel_values"  # the second input of a graph with a DINOv2 memory
INPUT_NAMES = (INPUT_NAME, MEMORY_INPUT_NAME)
OUTPUT_NAMES = ("image_scores", "anomaly_maps")
# A tiled category's graph scores a batch of tiles; the runtime stitches them (`io.tiling`).
TILE_OUTPUT_NAMES = ("patch_scores", "memory_patch_scores", "text_image_scores")


def sidecar_path(onnx_path: str) -> str:
    """model.onnx -> model.onnx.json"""
    return os.fspath(onnx_path) + ".json"


def read_sidecar(onnx_path: str) -> dict:
    """The sidecar of an exported model, checked for the fields the runtime reads."""
    path = sidecar_path(onnx_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: an exported model needs the JSON that `anomclip export` writes "
                                "beside it (preprocessing and thresholds)")
    try:
        with open(path, encoding="utf-8") as handle:
            settings = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(settings, dict) or settings.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path} is not an anomclip ONNX sidecar (expected \"format\": \"{SIDECAR_FORMAT}\")")
    if settings.get("format_version") != SIDECAR_VERSION:
        raise ValueError(f"{path} has format_version {settings.get('format_version')!r}; this anomclip_hf reads "
                         f"version {SIDECAR_VERSION}")
    missing = [key for key in ("image_size", "mean", "std", "resample") if key not in settings.get("preprocessing", {})]
    if missing:
        raise ValueError(f"{path}: preprocessing lacks {missing}")
    return settings
