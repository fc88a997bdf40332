"""Importing an optional extra's package with an error that says how to install it."""

from __future__ import annotations

import importlib


def import_extra(name: str, extra: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{name} is not installed; this needs the {extra} extra: "
                          f"pip install \"anomclip-hf[{extra}]\"") from error
