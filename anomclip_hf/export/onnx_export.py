"""`export_onnx`: one category of an AnomCLIPModel as one ONNX graph, with its sidecar JSON.

The graph is the model's own forward (dual-stream vision, memory search against the category's bank, the
cached text prototypes, fusion, upsampling and blur) traced by torch.export with a dynamic batch; the
category's tensors (memory bank, prototypes) become initializers. Nothing is re-implemented here, so the
graph computes whatever `AnomCLIPModel.forward` computes.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..errors import ExportError
from ..io.pixel_arrays import RESAMPLE_NAMES
from ..model.decisions import DEFAULT_SENSITIVITY
from .extras import import_extra
from .sidecar import (
    INPUT_NAME,
    INPUT_NAMES,
    MEMORY_INPUT_NAME,
    OUTPUT_NAMES,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    sidecar_path,
)

DEFAULT_OPSET = 18  # the oldest opset torch's torch.export-based exporter writes
QUANTIZE_MODES = ("int8",)
EXAMPLE_BATCH = 2  # traced with 2 images, so the batch dimension cannot be specialised to 1
CHECK_SEED = 0


class OnnxExportError(ExportError):
    """A category or an option that cannot be exported (the message says why)."""


class CategoryScorer(nn.Module):
    """The model's forward for one category, as the graph's function: pixel_values (and, with a DINOv2 memory,
    memory_pixel_values: both towers in one graph) -> (image_scores, maps)."""

    def __init__(self, model, category: str, output_size: int):
        super().__init__()
        self.model, self.category, self.output_size = model, category, output_size

    def forward(self, pixel_values: torch.Tensor, memory_pixel_values: Optional[torch.Tensor] = None):
        extra = {} if memory_pixel_values is None else {"memory_pixel_values": memory_pixel_values}
        out = self.model(pixel_values, category=self.category, output_size=self.output_size, **extra)
        return out.image_scores, out.anomaly_maps


def _example_inputs(model) -> tuple:
    """Seeded random inputs of the graph: (pixel_values,) or (pixel_values, memory_pixel_values)."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    size = model.config.image_size
    inputs = [torch.randn(EXAMPLE_BATCH, 3, size, size, generator=generator)]
    if getattr(model, "has_dino_memory", False):
        side = model.config.memory_image_size
        inputs.append(torch.randn(EXAMPLE_BATCH, 3, side, side, generator=generator))
    return tuple(tensor.to(model.device) for tensor in inputs)


@dataclass
class OnnxExport:
    path: str
    sidecar: str
    seconds: float  # torch.export + ONNX translation + checks (and quantization)
    check: dict  # max |ONNX Runtime - PyTorch| on seeded random pixel values, as in the sidecar

    def summary(self) -> str:
        return (f"{self.path} (+ {os.path.basename(self.sidecar)}) in {self.seconds:.1f} s; ONNX Runtime vs PyTorch "
                f"on {self.check['images']} random inputs: max |score diff| {self.check['max_abs_score_diff']:.2e}, "
                f"max |map diff| {self.check['max_abs_map_diff']:.2e}")


def _check_options(model, category: Optional[str], opset: int, output_size: Optional[int], fp16: bool,
                   quantize: Optional[str]):
    onnx = import_extra("onnx")
    import_extra("onnxscript")  # torch.onnx's exporter needs it
    import_extra("onnxruntime")  # the check after the export

    state = model.get_category(category)
    if state.memory_bank is None:
        raise OnnxExportError(f"category {state.name!r} has no memory bank (it was added without reference images); "
                              "an exported graph scores against one: add the category with reference_images=...")
    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= int(opset) <= newest:
        raise OnnxExportError(f"opset={opset}; the exporter writes opsets {DEFAULT_OPSET} to {newest}")
    output_size = output_size or model.config.output_size or model.config.image_size
    if int(output_size) < 1:
        raise OnnxExportError(f"output_size={output_size}; expected a positive map size in pixels")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise OnnxExportError(f"quantize={quantize!r}; expected one of {QUANTIZE_MODES} or None")
    if fp16 and quantize:
        raise OnnxExportError("fp16 and quantize are exclusive: int8 quantization starts from the float32 graph")
    return state, int(output_size)


def _session(path: str):
    return import_extra("onnxruntime").InferenceSession(path, providers=["CPUExecutionProvider"])


def _compare(session, scorer: CategoryScorer, inputs: tuple) -> dict:
    """Max |ONNX Runtime - PyTorch| of scores and maps on the example inputs (float32 reference)."""
    with torch.no_grad():
        scores, maps = (t.float().cpu().numpy() for t in scorer(*inputs))
    feeds = {name: tensor.float().cpu().numpy() for name, tensor in zip(INPUT_NAMES, inputs)}
    got_scores, got_maps = session.run(list(OUTPUT_NAMES), feeds)
    return {"images": int(inputs[0].shape[0]), "seed": CHECK_SEED,
            "max_abs_score_diff": float(np.abs(got_scores - scores).max()),
            "max_abs_map_diff": float(np.abs(got_maps - maps).max())}


def _memory_preprocessing(model) -> dict:
    """The second input of a graph with a DINOv2 memory: its shape and preprocessing (none otherwise)."""
    if not getattr(model, "has_dino_memory", False):
        return {}
    config, side = model.config, model.config.memory_image_size
    return {"memory_inputs": {MEMORY_INPUT_NAME: ["batch", 3, side, side]},
            "memory_preprocessing": {"image_size": side, "mean": list(config.memory_image_mean),
                                     "std": list(config.memory_image_std),
                                     "resample": RESAMPLE_NAMES[config.memory_image_resample], "color": "RGB",
                                     "scale": 1 / 255, "layout": "NCHW"}}


def _sidecar(model, state, onnx_path: str, opset: int, output_size: int, precision: str, check: dict) -> dict:
    record = model.category_record(state.name)
    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
        "onnx_file": os.path.basename(onnx_path),
        "inputs": {INPUT_NAME: ["batch", 3, model.config.image_size, model.config.image_size]},
        "outputs": {OUTPUT_NAMES[0]: ["batch"], OUTPUT_NAMES[1]: ["batch", output_size, output_size]},
        "preprocessing": {"image_size": model.config.image_size, "mean": list(model.config.image_mean),
                          "std": list(model.config.image_std),
                          "resample": RESAMPLE_NAMES[model.config.image_resample], "color": "RGB", "scale": 1 / 255,
                          "layout": "NCHW"},
        **_memory_preprocessing(model),
        "output_size": output_size,
        "decision_threshold": record["decision_threshold"],
        "pixel_threshold": record["pixel_threshold"],
        # the knob a deployment turns (model.decisions): 0.5 decides at decision_threshold
        "sensitivity": DEFAULT_SENSITIVITY,
        "category": record,
        "base_model": model.base_identity(),
        "opset": opset, "precision": precision, "check": check,
        "exported_with": {"anomclip_hf": __version__, "torch": torch.__version__},
    }


def export_onnx(model, path: str, category: Optional[str] = None, opset: int = DEFAULT_OPSET,
                output_size: Optional[int] = None, fp16: bool = False, quantize: Optional[str] = None) -> OnnxExport:
    """Write category `category` (default: the active one) of `model` as one ONNX graph at `path`, and
    `path + ".json"` beside it (see `sidecar`).

    Input `pixel_values` (batch, 3, S, S) float32 as `AnomCLIPProcessor` makes them; outputs `image_scores`
    (batch,) and `anomaly_maps` (batch, output_size, output_size). fp16: the weights and the vision tower in
    float16 (for GPU runtimes; the scores stay float32). quantize="int8": ONNX Runtime dynamic quantization of
    the matrix products' weights. The graph passes `onnx.checker`; the result's `check` is the largest
    difference from the PyTorch forward on seeded random inputs.
    """
    from ..io.atomic_io import write_json

    state, output_size = _check_options(model, category, opset, output_size, fp16, quantize)
    began = time.perf_counter()
    reference = CategoryScorer(model, state.name, output_size).eval()
    traced_model = copy.deepcopy(model).half() if fp16 else model
    scorer = CategoryScorer(traced_model, state.name, output_size).eval()
    inputs = _example_inputs(model)
    with torch.no_grad():
        # Fill the caches (text prototypes, upsampling matrices) with real tensors before tracing reads them.
        reference(*inputs)
        if scorer.model is not model:
            scorer(*inputs)
        batch = torch.export.Dim("batch")
        program = torch.export.export(scorer, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs), strict=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    float_path = path + ".float.onnx" if quantize else path
    torch.onnx.export(program, inputs, float_path, input_names=list(INPUT_NAMES[:len(inputs)]),
                      output_names=list(OUTPUT_NAMES),
                      opset_version=int(opset), dynamo=True, external_data=False, verbose=False)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        try:
            quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
        finally:
            os.remove(float_path)
    import_extra("onnx").checker.check_model(path, full_check=True)
    check = _compare(_session(path), reference, inputs)
    precision = "float16" if fp16 else (quantize or "float32")
    write_json(sidecar_path(path), _sidecar(model, state, path, int(opset), output_size, precision, check))
    return OnnxExport(path=path, sidecar=sidecar_path(path), seconds=time.perf_counter() - began, check=check)
