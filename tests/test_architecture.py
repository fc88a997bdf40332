"""The package's shape: an import graph without cycles whose imports point downwards, category tensors as
module state, reads that do not mutate, and a saved base that says what it resolved."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from anomclip_hf import AnomCLIPModel

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "anomclip_hf"
ROOT = "anomclip_hf"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, at module level) of every package import in a file: at module level, inside
    functions and under `if TYPE_CHECKING:` (a type-only import still ties two modules together), except in a
    package `__init__`'s lazy `__getattr__` (a re-export that runs only when the name is used, never when a
    submodule of the package is imported)."""
    found: list[tuple[str, list[str], bool]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> None:
        if is_package and isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], top) for alias in node.names if alias.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == ROOT:
                found.append((target, [alias.name for alias in node.names], top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
            and not _is_type_checking_block(node)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def _source_files() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def _graph(files: dict[str, Path], sources: dict[str, str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for target, names, _ in _imports(ast.parse(sources[module]), module, path.name == "__init__.py"):
            submodules = {f"{target}.{name}" for name in names} & set(files)
            targets |= submodules
            if module.startswith(target + ".") and submodules == {f"{target}.{n}" for n in names}:
                continue  # `from . import sibling`: the own package is running already; only the siblings count
            targets.add(target)
            # Importing a.b.c runs the __init__ of every package on the way (but the root, which is running
            # already whenever any of its modules is imported).
            parts = target.split(".")
            for depth in range(2, len(parts)):
                parent = ".".join(parts[:depth])
                if not module.startswith(parent + "."):
                    targets.add(parent)
        graph[module] = (targets & set(files)) - {module}
    return graph


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    files = _source_files()
    return _graph(files, {module: path.read_text() for module, path in files.items()})


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    return sorted(module for module in graph if module in _reachable(graph, module))


def test_package_has_no_import_cycles(import_graph):
    assert not _cycles(import_graph), f"modules on an import cycle: {_cycles(import_graph)}"


def test_the_graph_is_read_from_the_code(import_graph):
    # A control: the reader finds known edges, so an empty graph cannot pass the cycle test.
    assert "anomclip_hf.model.category_io" in import_graph["anomclip_hf.model.modeling_anomclip"]
    assert "anomclip_hf.hub" in import_graph["anomclip_hf.model.category_io"]  # via hub.download: runs hub/__init__
    assert "anomclip_hf.metrics._curves" in import_graph["anomclip_hf.metrics.accumulators"]  # from . import _curves
    assert "anomclip_hf.model.publishing" in import_graph["anomclip_hf.model.modeling_anomclip"]  # inside a function


# The layout's arrows (docs/developer/architecture.md): the folders each folder may import. Modules directly under
# anomclip_hf/ (the package face, _lazy, _version, errors) may be imported by all; they import no folder but
# the face's lazy names.
_BELOW_APPS = {"flags", "io", "metrics", "hub", "memory", "model", "convert", "data", "export", "inference",
               "training", "evaluation", "serving"}
ALLOWED_IMPORTS = {
    "flags": set(),
    "metrics": set(),
    "io": {"flags"},
    "hub": {"io", "flags"},
    "memory": {"io", "flags"},
    "data": {"io", "flags"},
    "model": {"io", "hub", "memory", "flags"},
    "convert": {"io", "model", "flags"},
    "export": {"model", "io", "memory", "hub", "flags"},
    "inference": {"model", "io", "hub", "memory", "data", "export", "flags"},
    "training": {"model", "inference", "data", "io", "hub", "memory", "metrics", "flags"},
    "evaluation": {"training", "inference", "model", "data", "metrics", "io", "hub", "memory", "export", "flags"},
    "serving": {"inference", "model", "io", "data", "hub", "memory", "export", "flags"},
    "app": _BELOW_APPS,
    "cli": _BELOW_APPS | {"app"},
}
# Torch-free folders: the command line parses its flags and the ONNX runtime scores with them loaded.
TORCH_FREE = {"flags", "io"}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE_DIR / parts[1]).is_dir()) else ""


def _forbidden_arrows(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        source = _folder(module)
        for target in targets:
            folder = _folder(target)
            if source and folder and folder != source and folder not in ALLOWED_IMPORTS[source]:
                wrong.append(f"{module} -> {target} ({source}/ may import {sorted(ALLOWED_IMPORTS[source])})")
    return sorted(wrong)


def test_every_folder_has_its_rule():
    folders = {path.name for path in PACKAGE_DIR.iterdir() if (path / "__init__.py").is_file()}
    assert folders - {"model_cards", "presets"} <= set(ALLOWED_IMPORTS), "a new folder needs its rule here"


def test_imports_follow_the_layout(import_graph):
    assert not _forbidden_arrows(import_graph), "\n".join(_forbidden_arrows(import_graph))
    # the bottom of model/: only the name rule of hub.validation (every name that reaches disk or the Hub)
    assert import_graph["anomclip_hf.model.category"] == {"anomclip_hf.errors", "anomclip_hf.hub",
                                                         "anomclip_hf.hub.validation"}


def test_a_forbidden_import_fails_the_rules():
    # A control: the same reader, fed the tree plus one upward import, reports it (and the cycle it closes).
    files = _source_files()
    sources = {module: path.read_text() for module, path in files.items()}
    sources["anomclip_hf.model.scoring"] += "\n\ndef _leak():\n    from ..inference.predictor import predict_files\n"
    graph = _graph(files, sources)
    assert _forbidden_arrows(graph) == ["anomclip_hf.model.scoring -> anomclip_hf.inference (model/ may import "
                                        "['flags', 'hub', 'io', 'memory'])",
                                        "anomclip_hf.model.scoring -> anomclip_hf.inference.predictor (model/ may "
                                        "import ['flags', 'hub', 'io', 'memory'])"]
    assert "anomclip_hf.model.scoring" in _cycles(graph)


def test_torch_free_folders_import_no_torch_at_module_level():
    heavy = ("torch", "transformers", "peft", "accelerate", "datasets", "scipy")
    for module, path in _source_files().items():
        if _folder(module) not in TORCH_FREE:
            continue
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n.split(".")[0] in heavy], f"{module} imports {names} at module level"


def test_top_level_stays_small():
    top = sorted(path.name for path in PACKAGE_DIR.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "_lazy.py", "_version.py", "errors.py"], top


def test_errors_import_nothing_of_the_package(import_graph):
    # Every folder imports errors.py; it must stay at the bottom (no cycle, no torch).
    assert import_graph["anomclip_hf.errors"] == set()
    imports = [node for node in ast.parse((PACKAGE_DIR / "errors.py").read_text()).body
               if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", "") != "__future__"]
    assert imports == []


# ----------------------------------------------------------------------------------------- module state
@pytest.fixture
def two_categories(tiny_model):
    generator = torch.Generator().manual_seed(0)
    tiny_model.add_category("bottle", reference_images=torch.randn(2, 3, 30, 30, generator=generator),
                            learned_prompts=True)
    tiny_model.add_category("cable", reference_images=torch.randn(1, 3, 30, 30, generator=generator),
                            activate=False, seed=1)
    for name in tiny_model.categories:
        tiny_model.text_prototypes(name)  # cached prototypes are module state too
    return tiny_model


def _category_tensors(model) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in model.categories:
        state = model.get_category(name)
        tensors.update({f"{name}.memory{i}": t for i, t in enumerate(state.memory_bank)})
        tensors.update({f"{name}.prototype.{h}": t for h, t in state.prototypes.items()})
        tensors[f"{name}.vectors"] = model.prompt_parameters(name)[0]
    return tensors


def test_category_tensors_are_in_the_state_dict(two_categories):
    keys = set(two_categories.state_dict())
    for name, layers in (("bottle", 2), ("cable", 2)):
        assert {f"category_bank.states.{name}.memory_{i}" for i in range(layers)} <= keys
        assert {f"category_bank.states.{name}.prototype_image", f"category_bank.states.{name}.prototype_pixel"} <= keys
    state = two_categories.get_category("bottle")
    assert torch.equal(two_categories.state_dict()["category_bank.states.bottle.memory_1"], state.memory_bank[1])


def test_half_and_meta_move_every_category_tensor(two_categories):
    tensors = _category_tensors(two_categories)
    assert len(tensors) == 2 * (2 + 2 + 1)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    two_categories.half()
    assert {name: t.dtype for name, t in _category_tensors(two_categories).items()} == \
        {name: torch.float16 for name in tensors}
    two_categories.to("meta")
    assert {name: t.device.type for name, t in _category_tensors(two_categories).items()} == \
        {name: "meta" for name in tensors}


def test_forward_uses_the_bank_in_place(two_categories, monkeypatch):
    # No per-forward copy: the memory search receives views of the registered buffers.
    import anomclip_hf.model.modeling_anomclip as modeling

    seen = []
    original = modeling.memory_patch_scores

    def spy(features, bank, *args, **kwargs):
        seen.extend(layer.untyped_storage().data_ptr() for layer in bank)
        return original(features, bank, *args, **kwargs)

    monkeypatch.setattr(modeling, "memory_patch_scores", spy)
    with torch.no_grad():
        two_categories(torch.randn(1, 3, 30, 30))
    buffers = [layer.untyped_storage().data_ptr() for layer in two_categories.get_category("bottle").memory_bank]
    assert seen == buffers


def test_saving_a_base_writes_clip_and_settings_only(two_categories, tmp_path):
    two_categories.save_pretrained(tmp_path / "base")
    with safe_open(str(tmp_path / "base" / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("clip.") for key in keys)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert config["memory_layers"] == two_categories.config.memory_layers == [0, 1]  # resolved, not null
    assert config["vv_layers"] == [0, 1]
    loaded = AnomCLIPModel.from_pretrained(tmp_path / "base")
    assert loaded.categories == []


def test_reads_do_not_mutate(two_categories):
    model = two_categories
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert model.active_category == "bottle"
    with torch.no_grad():
        cable = model.encode_prompt_texts("cable", ["<img_n0_0> cable."])
        bottle = model.encode_prompt_texts("bottle", ["<img_n0_0> cable."])
    assert model.active_category == "bottle"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert not torch.equal(cable, bottle)  # each read used the category it named
    # the lookup equals PEFT's own layer with that adapter active
    rows = torch.tensor([0, 3, 5])
    model.category_bank.prompt_tokens.token_embedding.set_adapter("cable")
    table = model.category_bank.prompt_tokens
    assert torch.equal(table.lookup("cable", rows), table.token_embedding(rows))


def test_a_base_without_tokenizer_says_so(tiny_model, tmp_path, caplog):
    tiny_model.save_pretrained(tmp_path / "base")
    for path in (tmp_path / "base").iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    with caplog.at_level(logging.WARNING):
        loaded = AnomCLIPModel.from_pretrained(tmp_path / "base")
    assert loaded.tokenizer is None
    assert "no tokenizer loaded from" in caplog.text and str(tmp_path / "base") in caplog.text


# ----------------------------------------------------------------------------------------- no machinery
def _calls_or_writes_import_machinery(tree: ast.AST) -> list[str]:
    """`sys.meta_path` / `sys.path_hooks` anywhere, and assignments into `sys.modules[...]`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" \
                and node.attr in ("meta_path", "path_hooks"):
            found.append(f"sys.{node.attr}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "sys.modules":
                found.append(ast.unparse(target))
    return found


def test_no_module_aliases_old_paths_or_touches_the_import_system():
    found = {module: hits for module, path in _source_files().items()
             if (hits := _calls_or_writes_import_machinery(ast.parse(path.read_text())))}
    assert not found, found
    for old in ("modeling_anomclip", "prediction", "category_io"):  # the 0.1 flat paths are gone
        with pytest.raises(ModuleNotFoundError):
            __import__(f"anomclip_hf.{old}")


def test_the_machinery_scan_finds_what_it_forbids():
    # A control: the scan reports a finder, a path hook and a module alias.
    tree = ast.parse("import sys\nsys.meta_path.append(x)\nsys.path_hooks.insert(0, y)\nsys.modules['a.b'] = m\n")
    assert sorted(_calls_or_writes_import_machinery(tree)) == ["sys.meta_path", "sys.modules['a.b']", "sys.path_hooks"]


def test_the_model_is_composed_not_mixed_in():
    # The model owns its parts as attributes; no class of the package but the model itself is in its MRO (the
    # rest is transformers' PreTrainedModel chain), so no state is written in one file and read in another.
    ours = [cls for cls in AnomCLIPModel.__mro__ if cls.__module__.split(".")[0] == ROOT]
    assert ours == [AnomCLIPModel]
    assert AnomCLIPModel.__mro__[1].__name__ == "PreTrainedModel"
