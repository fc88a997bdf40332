"""Runtime engines: one small interface, one class per runtime (as anomalib's deploy inferencers).

An engine turns decoded RGB PIL images into the category's scores, and says what it is:

    engine.preprocess(images)  -> a pixel batch in the engine's own type (torch tensors, numpy arrays)
    engine.score(pixel_batch)  -> (image_scores (B,) float32, anomaly_maps (B, H, W) float32), numpy
    engine.description         -> EngineDescription: name, category, stored thresholds, preprocessing, note

`Predictor` (inference/predictor.py) holds one engine and does everything else: decoding in a worker pool,
batching, isolating an input that fails, decisions, writing. Engines here:

    TorchEngine        (torch_engine.py)        an AnomCLIPModel's category, fp32/bf16/fp16 towers
    OnnxRuntimeEngine  (onnxruntime_engine.py)  an exported model (`anomclip export`) on ONNX Runtime, torch-free
    OpenVinoEngine     (openvino_engine.py)     the same exported model on OpenVINO (f32 unless told), torch-free

Adding a runtime (OpenVINO, TensorRT, ...) for the exported graph takes one module of ~50 lines:

1. `engines/openvino_engine.py`: a detector class, subclass of `export.runtime.OnnxAnomalyDetector` (the
   sidecar, the numpy preprocessing and the checks of the graph's inputs are already there), that overrides
   `_open_session(path, ...)` (compile the .onnx, return what `_infer` needs) and `_infer(feeds) -> (scores,
   maps)` (feeds: {"pixel_values": (B, 3, S, S) float32, and "memory_pixel_values" for a DINOv2 memory});
   then `class OpenVinoEngine(ExportedModelEngine)` with `name_of_runtime = "openvino"` and
   `detector_class` = that detector (its __init__ keyword arguments are the runtime's options).
2. Add it to `_EXPORTS` below and to `ENGINES` (the name `Predictor.from_onnx(path, runtime=...)` and
   `anomclip predict --onnx M --runtime NAME` accept).
3. Test: tests/inference/test_engines.py scores the same tiny export with every engine (within 1e-4).

Nothing outside engines/ changes: the Predictor only calls `preprocess`, `score` and `description`.
"""

from __future__ import annotations

from ..._lazy import lazy_exports
from .base import Engine, EngineDescription, Preprocessing
from ...errors import ArgumentError

# runtime name (of `Predictor.from_onnx(..., runtime=)`) -> "module:class" of an ExportedModelEngine
ENGINES = {"onnxruntime": "onnxruntime_engine:OnnxRuntimeEngine", "openvino": "openvino_engine:OpenVinoEngine"}

_EXPORTS = {"TorchEngine": "torch_engine", "OnnxRuntimeEngine": "onnxruntime_engine", "OpenVinoEngine": "openvino_engine",
            "ExportedModelEngine": "exported"}

__all__ = ["ENGINES", "Engine", "EngineDescription", "ExportedModelEngine", "OnnxRuntimeEngine", "Preprocessing",
           "OpenVinoEngine", "TorchEngine", "exported_engine"]
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


def exported_engine(runtime: str):
    """The ExportedModelEngine class of a runtime name ("onnxruntime", ...); ValueError naming the choices."""
    import importlib

    if runtime not in ENGINES:
        raise ArgumentError(f"runtime {runtime!r} is not known; expected one of {sorted(ENGINES)}")
    module, name = ENGINES[runtime].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
