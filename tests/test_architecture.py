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


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every package import in a file, at module level or inside functions,
    except under `if TYPE_CHECKING:` and in a package `__init__`'s lazy `__getattr__` (a re-export that runs
    only when the name is used, never when a submodule of the package is imported)."""
    found: list[tuple[str, list[str]]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if is_package and isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names if alias.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == ROOT:
                found.append((target, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for target, names in _imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
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


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_package_has_no_import_cycles(import_graph):
    cycles = sorted(module for module in import_graph if module in _reachable(import_graph, module))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_graph_is_read_from_the_code(import_graph):
    # A control: the reader finds known edges, so an empty graph cannot pass the cycle test.
    assert "anomclip_hf.model.category_io" in import_graph["anomclip_hf.model.modeling_anomclip"]
    assert "anomclip_hf.hub" in import_graph["anomclip_hf.model.category_io"]  # via hub.download: runs hub/__init__
    assert "anomclip_hf.metrics._curves" in import_graph["anomclip_hf.metrics.accumulators"]  # from . import _curves


def test_imports_point_downwards(import_graph):
    assert not import_graph["anomclip_hf.model.category"], "category.py must import nothing of the package"
    # Adapter and Hub I/O know no model.
    for module in ("anomclip_hf.model.category_io", "anomclip_hf.hub.download", "anomclip_hf.hub.validation",
                   "anomclip_hf.hub.model_card", "anomclip_hf.model.processing_anomclip", "anomclip_hf.model.thresholds"):
        assert "anomclip_hf.model.modeling_anomclip" not in _reachable(import_graph, module), module
    # The model never imports what uses it.
    above = {"anomclip_hf.cli", "anomclip_hf.cli.demo", "anomclip_hf.inference.prediction", "anomclip_hf.inference",
             "anomclip_hf.inference.pipeline_image_anomaly_detection", "anomclip_hf.training", "anomclip_hf.evaluation"}
    reached = _reachable(import_graph, "anomclip_hf.model.modeling_anomclip")
    assert not {m for m in reached if m in above or m.startswith(tuple(a + "." for a in above))}


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
        assert {f"category_states.{name}.memory_{i}" for i in range(layers)} <= keys
        assert {f"category_states.{name}.prototype_image", f"category_states.{name}.prototype_pixel"} <= keys
    state = two_categories.get_category("bottle")
    assert torch.equal(two_categories.state_dict()["category_states.bottle.memory_1"], state.memory_bank[1])


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
    model.prompt_tokens.token_embedding.set_adapter("cable")
    assert torch.equal(model.prompt_tokens.lookup("cable", rows), model.prompt_tokens.token_embedding(rows))


def test_a_base_without_tokenizer_says_so(tiny_model, tmp_path, caplog):
    tiny_model.save_pretrained(tmp_path / "base")
    for path in (tmp_path / "base").iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    with caplog.at_level(logging.WARNING):
        loaded = AnomCLIPModel.from_pretrained(tmp_path / "base")
    assert loaded.tokenizer is None
    assert "no tokenizer loaded from" in caplog.text and str(tmp_path / "base") in caplog.text
