"""The `anomclip` command line (`main`, the console script) and its commands, one module each."""

from ._common import resolve_device
from .main import build_parser, main

__all__ = ["build_parser", "main", "resolve_device"]
