"""Importing the onnx extra's packages with an error that says how to install them."""

from __future__ import annotations

import importlib


def import_extra(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{name} is not installed; export and ONNX Runtime scoring need the onnx extra: "
                          "pip install \"anomclip-hf[onnx]\" (at run time onnxruntime alone is enough)") from error
