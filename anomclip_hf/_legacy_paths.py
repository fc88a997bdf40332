"""The module paths of anomclip-hf 0.1 (a flat package) keep working after the package was arranged by job.

`import anomclip_hf.modeling_anomclip` (or `from anomclip_hf.prediction import predict_folder`) gives the very
module object that now lives at `anomclip_hf.model.modeling_anomclip`: code, notebooks and pickled references
written against 0.1 still run, and `isinstance` checks see one class. New code imports the new paths.
Two old names are packages now and need no alias: `anomclip_hf.cli` (its `main` is the console script) and
`anomclip_hf.inference` (it exports `score_images`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# 0.1 module (under anomclip_hf.) -> its module today
LEGACY_MODULES = {
    "atomic_io": "io.atomic_io",
    "safe_read": "io.safe_read",
    "run_lock": "io.run_lock",
    "image_io": "io.image_io",
    "pixel_arrays": "io.pixel_arrays",
    "batches": "io.batches",
    "base_source": "hub.base_source",
    "labels": "io.labels",
    "numeric_flags": "flags.numeric",
    "precision_flags": "flags.precision",
    "model_card": "hub.model_card",
    "category": "model.category",
    "prompts": "model.prompts",
    "configuration_anomclip": "model.configuration_anomclip",
    "modeling_anomclip": "model.modeling_anomclip",
    "processing_anomclip": "model.processing_anomclip",
    "vv_attention": "model.vv_attention",
    "text_encoding": "model.text_encoding",
    "prompt_learner": "model.prompt_learner",
    "tokenization": "model.tokenization",
    "scoring": "model.scoring",
    "losses": "model.losses",
    "thresholds": "model.thresholds",
    "decisions": "model.decisions",
    "precision": "model.precision",
    "dtypes": "model.dtypes",
    "category_io": "model.category_io",
    "convert_open_clip": "convert.open_clip",
    "convert_open_clip_sources": "convert.sources",
    "convert_open_clip_checks": "convert.checks",
    "prediction": "inference.predictor",
    "visualization": "inference.visualization",
    "pipeline_image_anomaly_detection": "inference.pipeline_image_anomaly_detection",
    "demo": "evaluation.demo",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):  # the target ran already; its module object is shared, not re-executed
        pass


class _LegacyPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != "anomclip_hf" or name not in LEGACY_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"anomclip_hf.{LEGACY_MODULES[name]}"))


def install() -> None:
    if not any(isinstance(finder, _LegacyPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(_LegacyPathFinder())  # last: the real modules are always found first
