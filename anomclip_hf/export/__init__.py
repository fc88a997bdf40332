"""Deployment: export a category to one ONNX graph (needs torch) and score with ONNX Runtime (torch-free).

    from anomclip_hf.export import export_onnx            # torch, transformers, onnx, onnxscript
    from anomclip_hf.export import OnnxAnomalyDetector    # numpy, pillow, onnxruntime only
    from anomclip_hf.export import OpenVinoAnomalyDetector  # numpy, pillow, openvino only

Names are imported on first use, so importing the detector never imports the exporter's torch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"export_onnx": "onnx_export", "OnnxExportError": "onnx_export", "OnnxAnomalyDetector": "runtime",
            "OnnxPrediction": "runtime", "OpenVinoAnomalyDetector": "openvino_runtime", "read_sidecar": "sidecar", "sidecar_path": "sidecar"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
