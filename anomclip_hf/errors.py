"""The exceptions anomclip-hf raises on purpose: one base, `AnomCLIPError`, and a class per kind of failure.

`except AnomCLIPError` catches every failure the package diagnosed itself (a bad adapter, an unreadable
image, a dataset in the wrong layout, ...), apart from bugs and the errors of the libraries below it. Each
class also keeps the built-in base that callers caught before it existed (ValueError for bad input,
OSError for files and downloads, RuntimeError for a busy resource), so `except ValueError` still works.

This module imports nothing of the package, so every folder may import it (tests/test_architecture.py).
Classes that belong to one folder's job are defined there, on these bases (`io.run_lock.FolderInUseError`,
`hub.download.CategoryDownloadError`, `export.onnx_export.OnnxExportError`, ...).
"""

from __future__ import annotations


class AnomCLIPError(Exception):
    """Base of every error anomclip-hf raises on purpose."""


class ConfigurationError(AnomCLIPError, ValueError):
    """A setting (of a config, preset or model) with a value the package cannot use; the message names it."""


class ArgumentError(AnomCLIPError, ValueError):
    """An argument of a call (a tensor of the wrong shape, an unknown mode, ...) the function cannot use."""


class CheckpointError(AnomCLIPError, ValueError):
    """A checkpoint (a CLIP, AnomCLIP or open_clip base, or a training run's) that cannot be wrapped, loaded,
    converted or resumed as asked."""


class AdapterError(AnomCLIPError, ValueError):
    """A category adapter (folder or Hub repo) that is incomplete, malformed, or made for another base."""


class CategoryError(AnomCLIPError, ValueError):
    """A category that is not loaded, or that lacks what an operation needs (references, a threshold, ...)."""


class ImageReadError(AnomCLIPError, ValueError):
    """An image or mask file could not be read or has an unusable content."""


class DatasetError(AnomCLIPError, ValueError):
    """A data set that cannot be used as given."""


class DatasetLayoutError(DatasetError):
    """A dataset folder is missing, empty, or its files do not pair up (image without mask, ...)."""


class ExportError(AnomCLIPError, ValueError):
    """A model, category or option that cannot be exported (the message says why)."""


class BusyError(AnomCLIPError, RuntimeError):
    """A resource another job is using right now (a model being fitted, an output folder being written)."""
