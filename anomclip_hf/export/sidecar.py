"""The JSON written beside an exported .onnx: what a caller needs besides the graph (torch-free).

    model.onnx        pixel_values (B, 3, S, S) float32 -> image_scores (B,), anomaly_maps (B, H, W); its
                      metadata_props name the category (GRAPH_CATEGORY_KEY)
    tiled category:   pixel_values (T, 3, S, S) of T tiles -> patch_scores (T, P), memory_patch_scores (T, P),
                      text_image_scores (T,); the sidecar's "tiling" says how to cut and stitch
    model.onnx.json   preprocessing (size, mean, std, resample), output size, decision and pixel thresholds,
                      the category record (as its category.json), the base model's identity and the SHA-256
                      of the graph file (`graph_sha256`)

A sidecar is untrusted input: `read_sidecar` checks every field the runtime reads against SIDECAR_SCHEMA (types
and plausible ranges) and `check_graph` ties it to its graph (the file's SHA-256, the category in the graph's
metadata), so a sidecar edited by hand or copied beside another category's graph is refused, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Optional

from ..errors import AnomCLIPError
from ..io.pixel_arrays import RESAMPLE_NAMES
from ..model.decisions import unreachable_threshold

SIDECAR_FORMAT = "anomclip-onnx"
# 2: graph_sha256 and the category in the graph's metadata (version 1 sidecars are refused: re-export)
SIDECAR_VERSION = 2
INPUT_NAME = "pixel_values"
MEMORY_INPUT_NAME = "memory_pixel_values"  # the second input of a graph with a DINOv2 memory
INPUT_NAMES = (INPUT_NAME, MEMORY_INPUT_NAME)
OUTPUT_NAMES = ("image_scores", "anomaly_maps")
# A tiled category's graph scores a batch of tiles; the runtime stitches them (`io.tiling`).
TILE_OUTPUT_NAMES = ("patch_scores", "memory_patch_scores", "text_image_scores")
GRAPH_CATEGORY_KEY = "anomclip.category"
RESAMPLE_FILTERS = tuple(sorted(RESAMPLE_NAMES.values()))
MAX_SIDE = 4096  # image and map sides: larger is no CLIP or DINOv2 preprocessing
# Per-channel normalisation of pixels in [0, 1]: a mean outside [0, 1] or a std outside [0.01, 1] is no
# preprocessing any vision tower uses, and would feed the graph values far off what it was traced with.
MEAN_RANGE, STD_RANGE = (0.0, 1.0), (0.01, 1.0)


class SidecarError(AnomCLIPError, ValueError):
    """A sidecar that is missing, unreadable, out of its schema or not the one of its graph."""


def sidecar_path(onnx_path: str) -> str:
    """model.onnx -> model.onnx.json"""
    return os.fspath(onnx_path) + ".json"


def graph_digest(data: bytes) -> str:
    """The SHA-256 of a graph file's bytes, as recorded in the sidecar."""
    return hashlib.sha256(data).hexdigest()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _side(value) -> Optional[str]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIDE:
        return None
    return f"an integer from 1 to {MAX_SIDE}"


def _triple(low: float, high: float, what: str):
    def problem(value) -> Optional[str]:
        if isinstance(value, list) and len(value) == 3 and all(_number(v) and low <= v <= high for v in value):
            return None
        return f"a list of 3 {what} from {low:g} to {high:g} (one per RGB channel)"
    return problem


def _resample(value) -> Optional[str]:
    return None if value in RESAMPLE_FILTERS else f"one of {list(RESAMPLE_FILTERS)}"


PREPROCESSING_SCHEMA = {"image_size": _side, "mean": _triple(*MEAN_RANGE, "means"),
                        "std": _triple(*STD_RANGE, "standard deviations"), "resample": _resample}


def _memory_kind(settings: dict) -> Optional[str]:
    """The memory the exported category scores with: "dino", "clip" or None (text only)."""
    if settings.get("memory_preprocessing") is not None:
        return "dino"
    shots = settings["category"].get("shots")
    return "clip" if isinstance(shots, int) and shots > 0 else None


def _threshold_problem(value, settings: dict) -> Optional[str]:
    if value is None:
        return None
    if not _number(value) or value <= 0:
        return "null or a finite number greater than 0"
    return unreachable_threshold(value, _memory_kind(settings))


def _fail(path: str, field: str, value, expected: str) -> SidecarError:
    shown = json.dumps(value)[:80] if not isinstance(value, float) else repr(value)
    return SidecarError(f"{path}: field '{field}' is {shown}; expected {expected}")


def check_sidecar(settings, path: str) -> dict:
    """`settings` if it is a sidecar this anomclip_hf reads, every field the runtime uses within its range;
    SidecarError naming the file and the first field that is not."""
    if not isinstance(settings, dict) or settings.get("format") != SIDECAR_FORMAT:
        raise SidecarError(f"{path} is not an anomclip ONNX sidecar (expected \"format\": \"{SIDECAR_FORMAT}\")")
    if settings.get("format_version") != SIDECAR_VERSION:
        raise SidecarError(f"{path} has format_version {settings.get('format_version')!r}; this anomclip_hf reads "
                           f"version {SIDECAR_VERSION} (export the category again with `anomclip export`)")
    digest = settings.get("graph_sha256")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _fail(path, "graph_sha256", digest, "the SHA-256 of the graph file (64 hex digits)")
    category = settings.get("category")
    if not isinstance(category, dict) or not isinstance(category.get("category"), str) or not category["category"]:
        raise _fail(path, "category", category, "the category record, with its name in 'category'")
    for block in ("preprocessing", "memory_preprocessing"):
        values = settings.get(block)
        if values is None and block == "memory_preprocessing":
            continue
        if not isinstance(values, dict):
            raise _fail(path, block, values, "an object with " + ", ".join(PREPROCESSING_SCHEMA))
        for key, problem in PREPROCESSING_SCHEMA.items():
            expected = problem(values.get(key))
            if expected:
                raise _fail(path, f"{block}.{key}", values.get(key), expected)
    expected = _side(settings.get("output_size"))
    if expected:
        raise _fail(path, "output_size", settings.get("output_size"), expected)
    for key in ("decision_threshold", "pixel_threshold"):
        expected = _threshold_problem(settings.get(key), settings)
        if expected:
            raise _fail(path, key, settings.get(key), expected)
    return settings


def read_sidecar(onnx_path: str) -> dict:
    """The sidecar of an exported model, checked against its schema (`check_sidecar`)."""
    path = sidecar_path(onnx_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: an exported model needs the JSON that `anomclip export` writes "
                                "beside it (preprocessing and thresholds)")
    try:
        with open(path, encoding="utf-8") as handle:
            settings = json.load(handle)  # NaN and Infinity parse as floats: the schema refuses them
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SidecarError(f"{path} is not valid JSON: {error}") from error
    return check_sidecar(settings, path)


def check_graph(onnx_path: str, graph: bytes, settings: dict, metadata: dict) -> None:
    """SidecarError unless `graph` (the bytes of the .onnx file) is the graph the sidecar was written for: its
    SHA-256 recorded in the sidecar, its metadata naming the sidecar's category."""
    if graph_digest(graph) != settings["graph_sha256"]:
        raise SidecarError(f"{onnx_path} is not the graph {sidecar_path(onnx_path)} was written for (its SHA-256 "
                           "differs from the sidecar's graph_sha256): the graph or the sidecar was replaced or "
                           "edited; export the category again")
    named, expected = metadata.get(GRAPH_CATEGORY_KEY), settings["category"]["category"]
    if named != expected:
        raise SidecarError(f"{onnx_path} is a graph of category {named!r} but its sidecar describes category "
                           f"{expected!r}; keep each graph with its own sidecar")
