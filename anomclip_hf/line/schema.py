"""The verdict: one versioned JSON message per input, the same for every sink (MQTT payload, webhook body,
OPC UA values, folder row). `verdict.schema.json` (shipped in the package) is its JSON Schema.

input_id is the idempotency key: a stable hash of (source name, input key), so the same file or frame has the
same id after a restart, and a sink that sees an id twice sees the same verdict twice.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from importlib import resources
from typing import Optional

from ..errors import AnomCLIPError

SCHEMA_VERSION = 1
SCHEMA_FILE = "verdict.schema.json"
DECISIONS = ("anomalous", "normal", "")
_FIELDS = ("schema_version", "input_id", "source", "input", "source_time", "scored_time", "category", "score",
           "normalized_score", "decision", "threshold", "model", "overlay", "error")


class VerdictSchemaError(AnomCLIPError, ValueError):
    """A message that does not follow verdict.schema.json."""


def input_id(source: str, key: str) -> str:
    """The idempotency key of one input: the same for the same (source, key) in every run."""
    return hashlib.sha256(f"{source}\0{key}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


def utc_text(seconds: float) -> str:
    """An epoch time as RFC 3339 UTC text with microseconds (what the schema's date-time fields hold)."""
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="microseconds")


def verdict(*, source: str, key: str, input_name: str, source_time: float, scored_time: float, category: str,
            model: dict, score: Optional[float] = None, normalized_score: Optional[float] = None,
            decision: str = "", threshold: Optional[float] = None, overlay: Optional[str] = None,
            error: Optional[str] = None) -> dict:
    """One verdict message (validated)."""
    message = {"schema_version": SCHEMA_VERSION, "input_id": input_id(source, key), "source": source,
               "input": input_name, "source_time": utc_text(source_time), "scored_time": utc_text(scored_time),
               "category": category, "score": None if error else score,
               "normalized_score": None if error else normalized_score, "decision": "" if error else decision,
               "threshold": threshold, "model": dict(model), "overlay": overlay, "error": error}
    validate(message)
    return message


def encode(message: dict) -> bytes:
    """The wire form every sink sends: compact UTF-8 JSON with sorted keys (the HMAC signs these bytes)."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def json_schema() -> dict:
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def validate(message: dict) -> None:
    """VerdictSchemaError naming the first problem: by the jsonschema package when installed, else by the
    same rules checked by hand."""
    try:
        import jsonschema
    except ImportError:
        return _check_by_hand(message)
    try:
        jsonschema.validate(message, json_schema(), format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(message)"
        raise VerdictSchemaError(f"verdict field {where}: {error.message}") from None


def _check_by_hand(message: dict) -> None:
    def fail(field, why):
        raise VerdictSchemaError(f"verdict field {field}: {why}")

    if not isinstance(message, dict):
        fail("(message)", "not an object")
    if set(message) != set(_FIELDS):
        fail(",".join(sorted(set(message) ^ set(_FIELDS))), "missing or unexpected")
    if message["schema_version"] != SCHEMA_VERSION:
        fail("schema_version", f"expected {SCHEMA_VERSION}")
    identifier = message["input_id"]
    if not (isinstance(identifier, str) and len(identifier) == 32 and all(c in "0123456789abcdef" for c in identifier)):
        fail("input_id", "expected 32 lower-case hex digits")
    for field in ("source", "input", "category"):
        if not isinstance(message[field], str) or not message[field]:
            fail(field, "expected a non-empty string")
    for field in ("source_time", "scored_time"):
        try:
            parsed = _dt.datetime.fromisoformat(message[field])
        except (TypeError, ValueError):
            fail(field, "expected an RFC 3339 date-time")
        if parsed.tzinfo is None:
            fail(field, "expected a time zone")
    for field in ("score", "normalized_score", "threshold"):
        value = message[field]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            fail(field, "expected a number or null")
    if message["normalized_score"] is not None and not 0 <= message["normalized_score"] <= 1:
        fail("normalized_score", "expected 0..1")
    if message["decision"] not in DECISIONS:
        fail("decision", f"expected one of {DECISIONS}")
    model = message["model"]
    if not isinstance(model, dict) or set(model) != {"base", "adapter", "engine"}:
        fail("model", "expected base, adapter and engine")
    if not isinstance(model["engine"], str) or not model["engine"]:
        fail("model/engine", "expected the engine's name (torch, onnxruntime, ...)")
    for field in ("base", "adapter"):
        if model[field] is not None and not isinstance(model[field], str):
            fail(f"model/{field}", "expected a string or null")
    for field in ("overlay", "error"):
        if message[field] is not None and not isinstance(message[field], str):
            fail(field, "expected a string or null")
    if message["error"] is not None and (message["score"] is not None or message["decision"] != ""):
        fail("score", "an error verdict carries no score and no decision")
    if message["error"] is None and message["score"] is None:
        fail("score", "expected a number (or an error)")
