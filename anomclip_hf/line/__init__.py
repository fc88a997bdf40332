"""The line service behind `anomclip watch`: sources (hot folder, video, camera, stream) -> the scoring loop
(a Predictor per category) -> a journal (SQLite) -> sinks (MQTT, OPC UA, webhook, folder), each verdict in
one versioned JSON schema (`verdict.schema.json`), with Prometheus metrics and a health endpoint.
Uses `inference`, `model`, `io`, `data`, `flags` and `serving.metrics`; nothing of the package imports it but
the command line. See docs/guides/line.md.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"LineService": "service", "LineConfig": "config", "load_config": "config", "parse_config": "config",
            "Journal": "journal", "verdict": "schema", "validate": "schema"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
