"""The schema of category.json, field by field: every field's type and range in one place (`RECORD_SCHEMA`),
and `validate_record`, which turns a mismatch into one ValueError naming the file, the field and what was
expected. A check is a function (value, path) that raises _Invalid(path, what was expected); the combinators
below build them."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Optional

from ..errors import AdapterError
from ..flags.numeric import THRESHOLD_RANGE as _THRESHOLD_RANGE
from .category import (
    MAX_REFERENCES,
    PROMPT_LAYOUT_KEYS,
    validate_category_name,
)
from .prompts import phrase_problem

# The adapter format versions, all here (a reader takes 1 to FORMAT_VERSION). 1: the exact memory bank
# (k, patches, width) per layer, written for every adapter without a coreset so older readers keep reading them;
# 2: adds "memory.coreset", a coreset bank (M, width) per layer; 3: adds "tiling" (the tiles fit used: an
# older reader would score such an adapter untiled, wrongly, so it must refuse it).
FORMAT_VERSION = 3
EXACT_FORMAT_VERSION = 1
CORESET_FORMAT_VERSION = 2
TILING_FORMAT_VERSION = 3
CATEGORY_FILE = "category.json"

MAX_TEXT_LENGTH = 256  # class name, base model name, ...
MAX_PHRASES = 1024
MAX_PATH_LENGTH = 4096
MAX_DEPTH = 8  # nesting of the free-form records (training, evaluation, threshold_estimate, prompts)
# (0, 2]: the one rule of stored and given thresholds (flags.numeric says why).
THRESHOLD_RANGE = _THRESHOLD_RANGE


_MISSING = object()


class _Invalid(Exception):
    def __init__(self, path: str, expected: str, value: Any):
        super().__init__(path)
        self.path, self.expected, self.value = path, expected, value


Check = Callable[[Any, str], None]


def _integer(low: int, high: int) -> Check:
    def check(value, path):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _Invalid(path, f"an integer from {low} to {high}", value)
    return check


def _boolean(value, path):
    if not isinstance(value, bool):
        raise _Invalid(path, "true or false", value)


def _string(max_length: int = MAX_TEXT_LENGTH) -> Check:
    def check(value, path):
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise _Invalid(path, f"a string of 1 to {max_length} characters", value)
    return check


def _threshold(value, path):
    low, high = THRESHOLD_RANGE
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
            not low < value <= high:
        raise _Invalid(path, f"a number greater than {low:g} and at most {high:g} (scores are in [0, 1])", value)


def _rule(problem: Callable[[Any], Optional[str]]) -> Check:
    """A check from a function returning None or what is expected (the package's own rules)."""
    def check(value, path):
        expected = problem(value)
        if expected:
            raise _Invalid(path, expected, value)
    return check


def _category_name_problem(value) -> Optional[str]:
    try:
        validate_category_name(value)
    except ValueError:
        return "1-96 letters, digits, '_' or '-', starting with a letter or digit"
    return None


def _nullable(check: Check) -> Check:
    def nullable(value, path):
        if value is None:
            return
        try:
            check(value, path)
        except _Invalid as error:
            if error.path != path:
                raise
            raise _Invalid(path, f"null or {error.expected}", value) from None
    return nullable


def _list_of(item: Check, max_items: int, min_items: int = 0) -> Check:
    def check(value, path):
        if not isinstance(value, list) or not min_items <= len(value) <= max_items:
            raise _Invalid(path, f"a list of {min_items} to {max_items} items", value)
        for index, element in enumerate(value):
            item(element, f"{path}[{index}]")
    return check


def _object(fields: Mapping[str, tuple], closed: bool = True) -> Check:
    """A JSON object with these (required, check) fields; `closed`: no others."""
    def check(value, path):
        if not isinstance(value, dict):
            raise _Invalid(path, "a JSON object", value)
        missing = [key for key, (required, _) in fields.items() if required and key not in value]
        if missing:
            raise _Invalid(f"{path}.{missing[0]}" if path else missing[0], "this field", _MISSING)
        unknown = sorted(set(value) - set(fields))
        if closed and unknown:
            where = f"{path}.{unknown[0]}" if path else unknown[0]
            raise _Invalid(where, f"only the fields {sorted(fields)} (unknown field)", value[unknown[0]])
        for key, (_, field_check) in fields.items():
            if key in value:
                field_check(value[key], f"{path}.{key}" if path else key)
    return check


def _free_json(max_depth: int = MAX_DEPTH) -> Check:
    """A free-form record (an object): any JSON values, nested at most `max_depth` levels."""
    def walk(value, path, depth):
        if depth > max_depth and isinstance(value, (dict, list)):
            raise _Invalid(path, f"at most {max_depth} levels of nesting", value)
        if isinstance(value, dict):
            for key, element in value.items():
                walk(element, f"{path}.{key}", depth + 1)
        elif isinstance(value, list):
            for index, element in enumerate(value):
                walk(element, f"{path}[{index}]", depth + 1)

    def check(value, path):
        if not isinstance(value, dict):
            raise _Invalid(path, "a JSON object", value)
        walk(value, path, 1)
    return check


_COUNT = _integer(0, 4096)
PROMPT_LAYOUT_SCHEMA = _object({
    **{key: (True, _COUNT) for key in PROMPT_LAYOUT_KEYS if key != "anomaly_token_position"},
    "anomaly_token_position": (True, _string(64)),
    "prompt_token_names": (False, _list_of(_string(64), 1 << 16)),
    "prompt_token_ids": (False, _list_of(_integer(0, 1 << 31), 1 << 16)),
    "prompts": (False, _free_json(4)),
})
BASE_MODEL_SCHEMA = _object({
    "name_or_path": (False, _nullable(_string(MAX_PATH_LENGTH))),
    "revision": (False, _nullable(_string())),
    "architecture": (False, _nullable(_object({}, closed=False))),  # compared with the base's, key by key
    "fingerprint": (False, _nullable(_string(64))),
    "random_weights": (False, _boolean),  # a pipeline-check base: its outputs are labelled PIPELINE CHECK
})


def _radius(value, path):
    # distances between unit vectors lie in [0, 2]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
            not 0 <= value <= 2:
        raise _Invalid(path, "a distance between unit vectors (a number from 0 to 2)", value)


CORESET_SCHEMA = _object({
    "method": (True, _string(64)),
    "size": (True, _integer(1, 1 << 40)),  # rows kept per layer (checked against the tensors and the base)
    "rows": (True, _integer(1, 1 << 40)),  # rows of the full bank: shots x patches
    "seed": (True, _integer(-(1 << 63), (1 << 64) - 1)),
    "projection_dim": (True, _nullable(_integer(1, 1 << 20))),
    "coverage_radius": (True, _list_of(_radius, 4096, 1)),  # per memory layer, in the order of "layers"
    "reference_patch_score_bound": (False, _radius),
})
# A DINOv2 memory backbone: compared with the base's by model type, sizes and fingerprint.
MEMORY_BACKBONE_SCHEMA = _object({
    "name_or_path": (False, _nullable(_string(MAX_PATH_LENGTH))),
    "revision": (False, _nullable(_string())),
    "model_type": (True, _string(64)),
    "architecture": (True, _object({}, closed=False)),
    "fingerprint": (True, _string(64)),
})
def _tile(value, path):
    if value == "auto":
        return
    _integer(1, 1 << 20)(value, path)


def _overlap(value, path):
    if isinstance(value, float) and math.isfinite(value) and 0 <= value < 1:
        return
    try:
        _integer(0, 1 << 20)(value, path)
    except _Invalid:
        raise _Invalid(path, "pixels (an integer >= 0) or a fraction from 0 to below 1", value) from None


# Tiled scoring at native resolution (`io.tiling`): what fit used, so predict tiles alike.
TILING_SCHEMA = _object({
    "tile": (True, _tile),  # as asked: pixels or "auto"
    "overlap": (True, _overlap),  # as asked: pixels or a fraction
    "tile_pixels": (True, _integer(1, 1 << 20)),  # the tile fit used on its references
    "stride": (True, _integer(1, 1 << 20)),
    "reference_size": (True, _list_of(_integer(1, 1 << 20), 2, 2)),  # [height, width]
    "tiles_per_reference": (True, _integer(1, 1 << 30)),
    "references": (True, _integer(1, MAX_REFERENCES)),
})
RECORD_SCHEMA = _object({
    "format_version": (True, _integer(1, FORMAT_VERSION)),
    "category": (True, _rule(_category_name_problem)),
    "class_name": (True, _string()),
    "phrases": (True, _list_of(_rule(phrase_problem), MAX_PHRASES, 1)),  # none: no anomaly prompt
    "learned_prompts": (True, _boolean),
    "prompt_layout": (True, PROMPT_LAYOUT_SCHEMA),
    "base_model": (True, BASE_MODEL_SCHEMA),
    "memory": (False, _nullable(_object({"layers": (True, _list_of(_integer(0, 4096), 4096)),
                                         "tap": (True, _string(64)),
                                         "coreset": (False, _nullable(CORESET_SCHEMA)),
                                         "backbone": (False, _nullable(MEMORY_BACKBONE_SCHEMA))}))),
    # = the memory bank's k (checked with the tensors); a coreset memory may come from up to MAX_REFERENCES
    "shots": (True, _integer(0, MAX_REFERENCES)),
    "seed": (False, _nullable(_integer(-(1 << 63), (1 << 64) - 1))),
    "reference_files": (False, _nullable(_list_of(_string(MAX_PATH_LENGTH), MAX_REFERENCES))),
    "training": (False, _nullable(_free_json())),
    "evaluation": (False, _nullable(_free_json())),
    "decision_threshold": (False, _nullable(_threshold)),
    "pixel_threshold": (False, _nullable(_threshold)),
    "threshold_estimate": (False, _nullable(_free_json())),
    "tiling": (False, _nullable(TILING_SCHEMA)),
})


def show_value(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__} {json.dumps(value)}"
    return text if len(text) <= 80 else text[:77] + "..."


def validate_record(record: Any, source: str) -> dict:
    """`record` (parsed category.json) if it matches RECORD_SCHEMA, else one ValueError naming the file, the
    field and what was expected."""
    if not isinstance(record, dict):
        raise AdapterError(f"{source}: {CATEGORY_FILE} holds {show_value(record)}; expected a JSON object")
    check_format_version(record, source)  # first: a newer format is an upgrade, not a broken file
    try:
        RECORD_SCHEMA(record, "")
    except _Invalid as error:
        found = "is missing" if error.value is _MISSING else f"is {show_value(error.value)}"
        raise AdapterError(f"{source}: {CATEGORY_FILE} field {error.path!r} {found}; expected {error.expected}") from None
    return record



def check_format_version(record: dict, source: str) -> None:
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AdapterError(f"{source}: {CATEGORY_FILE} field 'format_version' is {show_value(version)}; expected an "
                         f"integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise AdapterError(f"{source}: the adapter has format_version {version}, made by a newer anomclip-hf; this "
                         f"anomclip-hf reads format_version {FORMAT_VERSION} at most: upgrade anomclip-hf "
                         "(pip install -U anomclip-hf)")


