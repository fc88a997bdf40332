"""`OpenVinoAnomalyDetector`: score images with an exported category on OpenVINO (the `openvino` extra).

The same exported graph and sidecar as ONNX Runtime (`anomclip export`): OpenVINO reads the .onnx file as it
is. Torch-free, as `OnnxAnomalyDetector`, whose preprocessing, input checks and outputs it shares; only the
inference step differs. Float32 by default, set explicitly: on CPUs with bf16 instructions OpenVINO would
otherwise choose bf16 by itself (slower on the CPU this was measured on, and maps off by about 2.5e-3).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .extras import import_extra
from .runtime import OnnxAnomalyDetector
from ..errors import ExportError
from .sidecar import GRAPH_CATEGORY_KEY, OUTPUT_NAMES

# OpenVINO's names for INFERENCE_PRECISION_HINT
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoAnomalyDetector(OnnxAnomalyDetector):
    """An exported category on OpenVINO: `detector(images)` -> scores, decisions and maps (as OnnxAnomalyDetector).

    path: the .onnx file (its sidecar `path + ".json"` as for ONNX Runtime); threshold: as there.
    precision: "fp32" (default), "bf16" or "fp16": OpenVINO's INFERENCE_PRECISION_HINT.
    device: an OpenVINO device name ("CPU", "GPU", "AUTO"); threads: INFERENCE_NUM_THREADS (None: OpenVINO's).
    """

    def __init__(self, path: str, threshold: Optional[float] = None, precision: str = "fp32", device: str = "CPU",
                 threads: Optional[int] = None):
        if precision not in OPENVINO_PRECISIONS:
            raise ExportError(f"precision={precision!r}; expected one of {sorted(OPENVINO_PRECISIONS)}")
        self.precision, self.device, self.threads = precision, device, threads
        super().__init__(path, threshold=threshold)  # reads the sidecar, then `_open_session`

    def _open_session(self, path: str, providers=None, session_options=None):
        if self.settings.get("tiling") is not None:
            raise ExportError(f"{path} is a tiled category (its graph scores tiles); run it on ONNX Runtime "
                              "(--runtime onnxruntime): the OpenVINO runtime scores whole images only")
        openvino = import_extra("openvino")
        properties = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads is not None:
            properties["INFERENCE_NUM_THREADS"] = int(self.threads)
        core = openvino.Core()
        graph = core.read_model(path)
        # OpenVINO's ONNX reader keeps the graph's metadata_props under rt_info["framework"]
        self._graph_metadata = {key: graph.get_rt_info(["framework", key]).astype(str)
                                for key in (GRAPH_CATEGORY_KEY,) if graph.has_rt_info(["framework", key])}
        self.compiled = core.compile_model(graph, self.device, properties)
        self._outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        return self.compiled.create_infer_request()

    def _metadata(self) -> dict:
        return self._graph_metadata

    def _infer(self, feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        results = self.session.infer(feeds)
        scores, maps = (np.array(results[output]) for output in self._outputs)  # copies: the request reuses its buffers
        return scores, maps

    infer = _infer  # the engine step alone (benchmarks/bench_engines.py times it)
