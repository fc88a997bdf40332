"""Scoring beyond one process: accelerate shards (`shards`), a Ray Data actor pool (`ray_engine`) and an HTTP
endpoint with dynamic batching (`server`, on LitServe). All of them score through `inference.predictor.Predictor`.
Uses `inference`, `model`, `io`, `data`, `flags`, `hub`, `export` and `memory`; nothing of the package imports it
but the command line.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"predict_sharded": "shards", "score_dataset": "ray_engine", "predict_with_ray": "ray_engine",
            "build_server": "server", "serve": "server"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
