"""The method: AnomCLIP's configuration, model, processor and what they compute (V-V attention, prompts, text
encoding, scoring, losses, thresholds), the category bank and its adapter files. Imports `io`, `hub`,
`memory` and `flags`, never `inference`, `training`, `cli` or the apps. Names load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"AnomCLIPConfig": "configuration_anomclip", "AnomCLIPModel": "modeling_anomclip",
            "AnomCLIPOutput": "modeling_anomclip", "AnomCLIPProcessor": "processing_anomclip"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
