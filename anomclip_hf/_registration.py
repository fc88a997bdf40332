"""Register AnomCLIP with transformers when transformers is used, without importing it when it is not.

`import anomclip_hf` must stay cheap (the command line starts from it), yet it promises that AutoConfig,
AutoModel and pipeline("image-anomaly-detection") know AnomCLIP afterwards. So the registrations wait for the
transformers modules they extend: each runs right after its module finishes importing (or at once when it is
imported already). transformers' own import is never triggered from here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

# transformers module -> the anomclip_hf module whose import registers with it.
_TRIGGERS = {
    "transformers.models.auto.configuration_auto": "anomclip_hf.model.configuration_anomclip",
    "transformers.models.auto.modeling_auto": "anomclip_hf.model.modeling_anomclip",
    "transformers.models.auto.processing_auto": "anomclip_hf.model.processing_anomclip",
    "transformers.pipelines": "anomclip_hf.inference.pipeline_image_anomaly_detection",
}
_pending: list[str] = []  # triggers imported, registration not yet run
_running = False  # a registration is importing: the transformers imports it causes must not start another


_WATCHED = ("transformers", "anomclip_hf")


def _mid_import() -> bool:
    """True while a module of transformers or of this package (but its root, which installs the hook at the
    end of its own import) is still executing: registering then would import code against a half-initialised
    module."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items())
               if name.split(".")[0] in _WATCHED and name != "anomclip_hf")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loaders of the modules of transformers and of this package: once a trigger module has been
    imported and none of them is mid-import any more, the pending registrations run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in _WATCHED:
            return None
        for finder in sys.meta_path:  # the spec the rest of the import system would have produced
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec

        run = loader.exec_module

        def exec_module(module):  # on this loader instance only: get_code, is_package ... stay its own
            run(module)
            if fullname in _TRIGGERS:
                _pending.append(fullname)
            _run_pending(exclude=module)

        loader.exec_module = exec_module
        return spec


def _run_pending(exclude=None) -> None:
    global _running
    # The module just executed still counts as initialising until its exec_module returns: skip it.
    if exclude is not None and getattr(exclude, "__spec__", None) is not None:
        exclude.__spec__._initializing = False
    if _running:
        return
    _running = True
    try:
        while _pending and not _mid_import():
            importlib.import_module(_TRIGGERS[_pending.pop(0)])
    finally:
        _running = False


def install() -> None:
    """Register now for what transformers has loaded already, and later for the rest."""
    if not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
    _pending.extend(trigger for trigger in _TRIGGERS if trigger in sys.modules and trigger not in _pending)
    _run_pending()
