"""`OpenVinoEngine`: an exported model on OpenVINO (extra `openvino`; no torch)."""

from __future__ import annotations

from typing import Optional

from ...export.openvino_runtime import OpenVinoAnomalyDetector
from .exported import ExportedModelEngine


class OpenVinoEngine(ExportedModelEngine):
    """path: the .onnx file; precision: "fp32" (default, set explicitly), "bf16" or "fp16"; device: an OpenVINO
    device name; threads: OpenVINO's inference threads (None: its own choice)."""

    name_of_runtime = "openvino"
    detector_class = OpenVinoAnomalyDetector

    def __init__(self, path: str, *, threshold: Optional[float] = None, precision: str = "fp32", device: str = "CPU",
                 threads: Optional[int] = None):
        super().__init__(path, threshold=threshold, precision=precision, device=device, threads=threads)
