"""Rewriting the thresholds of a saved adapter in place (`anomclip calibrate`): category.json and its model card,
each replaced atomically, the tensors and any other file of the folder left as they are."""

from __future__ import annotations

import json
import os
from typing import Mapping

from ..hub.model_card import render_category_card
from ..io.atomic_io import write_json, write_text
from .adapter_schema import CATEGORY_FILE, validate_record
from .category_io import CARD_FILE, read_category_record

THRESHOLD_KEYS = ("decision_threshold", "pixel_threshold", "threshold_estimate")


def write_thresholds(folder: str, metadata: Mapping) -> dict:
    """Store the THRESHOLD_KEYS of `metadata` in the adapter folder's category.json (checked against the schema
    before anything is written) and re-render its README.md; returns the new record."""
    folder = os.fspath(folder)
    record = read_category_record(folder)
    record.update({key: metadata.get(key) for key in THRESHOLD_KEYS})
    record = validate_record(json.loads(json.dumps(record)), folder)  # as it will read back
    write_json(os.path.join(folder, CATEGORY_FILE), record)
    write_text(os.path.join(folder, CARD_FILE), render_category_card(record, folder))
    return record
