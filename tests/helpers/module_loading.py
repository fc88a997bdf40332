"""Loading one test module from another (a converted model runs the parity checks of tests/model/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS_DIR = Path(__file__).resolve().parents[1]


def load_test_module(relative_path: str) -> ModuleType:
    """The test module at tests/<relative_path>, imported once under its file name."""
    path = TESTS_DIR / relative_path
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
