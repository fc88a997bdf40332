"""Importing the onnx extra's packages with an error that says how to install them."""

from __future__ import annotations

import importlib


_HINTS = {"openvino": "OpenVINO scoring needs the openvino extra: pip install \"anomclip-hf[openvino]\""}


def import_extra(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        hint = _HINTS.get(name, "export and ONNX Runtime scoring need the onnx extra: pip install "
                                "\"anomclip-hf[onnx]\" (at run time onnxruntime alone is enough)")
        raise ImportError(f"{name} is not installed; {hint}") from error
