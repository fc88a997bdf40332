"""Package namespaces whose names load their module on first use (so `import anomclip_hf` and the command
line stay cheap: torch and transformers load only when a name that needs them is used)."""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(namespace: dict, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for the package whose globals are `namespace`; `exports` maps each public
    name to the submodule (relative to the package, or absolute: "anomclip_hf.x.y") that defines it. A loaded
    name is cached in the package."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        relative = not module.startswith("anomclip_hf.")
        value = getattr(importlib.import_module(f".{module}" if relative else module, package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
