"""The verdict schema: the shipped JSON Schema file, the messages the service builds, and the by-hand check
used without the jsonschema package agreeing with jsonschema on good and bad messages."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from anomclip_hf.line import schema
from anomclip_hf.line.schema import VerdictSchemaError, input_id, json_schema, validate, verdict

REPO = Path(__file__).resolve().parents[2]


def good(**changes):
    fields = dict(source="cam1", key="a.png|10|20", input_name="a.png", source_time=1_700_000_000.5,
                  scored_time=1_700_000_001.25, category="widget", score=0.25, normalized_score=0.625,
                  decision="anomalous", threshold=0.2, model={"base": "b", "adapter": "a", "engine": "torch"})
    fields.update(changes)
    return verdict(**fields)


def test_the_schema_file_ships_with_the_package():
    assert json_schema()["properties"]["schema_version"] == {"const": schema.SCHEMA_VERSION}
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.json" in package_data["anomclip_hf.line"]
    assert (REPO / "anomclip_hf" / "line" / schema.SCHEMA_FILE).is_file()


def test_a_verdict_has_every_field_and_a_stable_id():
    message = good()
    assert list(message) == list(schema._FIELDS)
    assert message["input_id"] == input_id("cam1", "a.png|10|20") == good()["input_id"]
    assert message["input_id"] != input_id("cam2", "a.png|10|20")
    assert message["source_time"] == "2023-11-14T22:13:20.500000+00:00"
    error = good(error="a.png: cannot read", score=0.3, decision="normal")
    assert error["score"] is None and error["decision"] == "" and error["normalized_score"] is None
    assert schema.encode(message) == schema.encode(copy.deepcopy(message))  # the bytes the HMAC signs


BAD = [("schema_version", 2), ("input_id", "XYZ"), ("source", ""), ("source_time", "yesterday"),
       ("score", "0.3"), ("normalized_score", 1.5), ("decision", "maybe"), ("model", {"base": "b"}), ("model", {"base": "b", "adapter": "a", "engine": ""}),
       ("overlay", 3), ("extra", 1)]


@pytest.mark.parametrize("field, value", BAD)
def test_bad_messages_fail_both_checks_naming_the_field(field, value):
    pytest.importorskip("jsonschema")
    message = good()
    message[field] = value
    with pytest.raises(VerdictSchemaError):
        validate(message)
    with pytest.raises(VerdictSchemaError, match=field if field != "extra" else "extra"):
        schema._check_by_hand(message)


def test_an_error_verdict_with_a_score_fails_both_checks():
    message = good(error="broken")
    message["score"] = 0.5
    with pytest.raises(VerdictSchemaError):
        validate(message)
    with pytest.raises(VerdictSchemaError, match="score"):
        schema._check_by_hand(message)
    schema._check_by_hand(good())
    schema._check_by_hand(good(error="broken"))
