"""`OnnxRuntimeEngine`: an exported model on ONNX Runtime (extra `onnx`; no torch)."""

from __future__ import annotations

from typing import Optional, Sequence

from .exported import ExportedModelEngine


class OnnxRuntimeEngine(ExportedModelEngine):
    """path: the .onnx file; providers: ONNX Runtime execution providers (default: CPU); session_options: an
    `onnxruntime.SessionOptions`."""

    name_of_runtime = "onnxruntime"

    def __init__(self, path: str, *, threshold: Optional[float] = None, providers: Optional[Sequence[str]] = None,
                 session_options=None):
        super().__init__(path, threshold=threshold, providers=providers, session_options=session_options)
