"""Fixtures of the inference tests: one tiny category saved as base + adapter and exported to ONNX."""

from __future__ import annotations

import pytest
from inference_setup import exported_category


@pytest.fixture(scope="module")
def category(tmp_path_factory, tiny_clip):
    """See `inference_setup.exported_category`."""
    return exported_category(tmp_path_factory.mktemp("inference"), tiny_clip)
