"""One exception hierarchy: every error the package raises on purpose is an AnomCLIPError and keeps the built-in
base callers caught before (ValueError, OSError, RuntimeError)."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from anomclip_hf import errors
from anomclip_hf.errors import (
    AdapterError,
    AnomCLIPError,
    ArgumentError,
    BusyError,
    CategoryError,
    CheckpointError,
    ConfigurationError,
    DatasetError,
    DatasetLayoutError,
    ExportError,
    ImageReadError,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "anomclip_hf"


@pytest.mark.parametrize("error, builtin", [
    (ConfigurationError, ValueError), (ArgumentError, ValueError), (CheckpointError, ValueError),
    (AdapterError, ValueError), (CategoryError, ValueError), (ImageReadError, ValueError),
    (DatasetError, ValueError), (DatasetLayoutError, DatasetError), (ExportError, ValueError),
    (BusyError, RuntimeError)])
def test_hierarchy(error, builtin):
    assert issubclass(error, AnomCLIPError) and issubclass(error, builtin)
    assert not issubclass(AdapterError, ImageReadError) and not issubclass(ConfigurationError, AdapterError)


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every public exception class defined in the package (by its bases' names)."""
    found = []
    for path in PACKAGE_DIR.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    ast.unparse(base).endswith(("Error", "Exception", "Problem")) for base in node.bases):
                found.append((module, node.name))
    return found


def test_every_exception_class_of_the_package_is_an_anomclip_error():
    classes = _exception_classes()
    assert len(classes) >= 19  # a control: the scan finds them (11 in errors.py, 8 in their folders)
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, AnomCLIPError), f"{module}.{name} is not an AnomCLIPError"


def test_the_old_import_locations_name_the_same_classes():
    from anomclip_hf.app.workspace import BusyError as workspace_busy
    from anomclip_hf.data import DatasetLayoutError as data_layout
    from anomclip_hf.hub.download import CategoryDownloadError
    from anomclip_hf.io.image_io import ImageReadError as image_read
    from anomclip_hf.io.run_lock import FolderInUseError

    assert (workspace_busy, data_layout, image_read) == (BusyError, DatasetLayoutError, ImageReadError)
    assert issubclass(FolderInUseError, BusyError) and issubclass(FolderInUseError, OSError)
    assert issubclass(CategoryDownloadError, AnomCLIPError) and issubclass(CategoryDownloadError, OSError)


def test_errors_module_is_standalone():
    # Every folder imports it, torch-free ones included: it imports nothing.
    tree = ast.parse(Path(errors.__file__).read_text())
    assert [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
            and getattr(node, "module", None) != "__future__"] == []


# ----------------------------------------------------------------------------------------- raised where it happens
@pytest.fixture
def saved_adapter(tiny_model, tmp_path):
    tiny_model.add_category("widget", reference_images=torch.randn(2, 3, 30, 30,
                                                                  generator=torch.Generator().manual_seed(0)))
    return Path(tiny_model.save_category(str(tmp_path / "widget")))


def test_a_bad_adapter_folder_raises_adapter_error(tiny_model, saved_adapter, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_adapter, broken)
    (broken / "category.json").write_text("{not json")
    with pytest.raises(AdapterError, match=r"category.json is not valid JSON"):
        tiny_model.load_category(str(broken))
    missing = tmp_path / "missing"
    shutil.copytree(saved_adapter, missing)
    os.remove(missing / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"missing \['adapter_model.safetensors'\]"):
        tiny_model.load_category(str(missing))
    assert tiny_model.categories == ["widget"]  # nothing changed
    with pytest.raises(ValueError):  # callers that catch ValueError still do
        tiny_model.load_category(str(broken))


def test_an_unreadable_image_raises_image_read_error(tmp_path):
    from anomclip_hf.io.image_io import load_image

    path = tmp_path / "part.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageReadError, match="part.png"):
        load_image(str(path))


def test_other_failures_raise_their_class(tiny_model, tmp_path):
    from anomclip_hf.data import load_folder

    with pytest.raises(CategoryError, match="no category is loaded"):
        tiny_model.get_category()
    with pytest.raises(ArgumentError, match=r"pixel_values has shape \(1, 3, 8, 8\)"):
        tiny_model.encode_images(torch.zeros(1, 3, 8, 8))
    with pytest.raises(DatasetLayoutError):
        load_folder(str(tmp_path / "no_such_folder"))
