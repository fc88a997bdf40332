"""Category adapter folders (one folder = one Hub repo).

```
adapter_config.json          PEFT TrainableTokens config of the prompt vectors (rows of the prompt table)
adapter_model.safetensors    the learned vectors
category.json                class name, phrases, prompt layout, base model identity, shots, seed, summary,
                             threshold, format version
memory_bank.safetensors      reference patch features, one (k, patches, width) tensor per memory layer
text_prototypes.safetensors  cached [normal, anomaly] prototypes per head, so loading never runs the text tower
README.md                    model card
```

An adapter is data, never code: only these JSON and safetensors files are read (no pickle, no remote code),
and nothing named inside category.json is used as a file-system path.

This module reads and writes (record, tensors) and checks them against what a base model expects
(`AdapterExpectations`); it never imports the model. The model turns the contents into a `CategoryState`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic_io import atomic_directory
from .category import PROMPT_LAYOUT_KEYS, describe_base, validate_category_name
from .hub.download import download_category
from .hub.validation import looks_like_local_path, validate_repo_id
from .model_card import render_category_card

FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CATEGORY_FILE = "category.json"
MEMORY_FILE = "memory_bank.safetensors"
PROTOTYPES_FILE = "text_prototypes.safetensors"
CARD_FILE = "README.md"
LAYOUT_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CATEGORY_FILE, MEMORY_FILE, PROTOTYPES_FILE, CARD_FILE)
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CATEGORY_FILE)
# Files that would need unpickling; an adapter holding only these is refused, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_RECORD_KEYS = ("format_version", "category", "class_name", "phrases", "learned_prompts", "prompt_layout",
                "base_model")


@dataclass(frozen=True)
class AdapterExpectations:
    """What a base model expects of an adapter: its prompt layout, identity and tensor sizes."""

    prompt_layout: Mapping  # PROMPT_LAYOUT_KEYS -> the model's values
    base_identity: Mapping  # category.json "base_model" of this base
    memory_layers: tuple
    memory_tap: str
    vision_width: int
    projection_dim: int
    text_width: int
    adapter_config: Mapping  # the PEFT config the prompt vectors must have (peft_type, token_indices)


@dataclass
class AdapterContents:
    """An adapter folder read into memory: category.json and the tensors of each file."""

    record: dict
    adapter_config: dict
    weights: dict  # PEFT state dict of the prompt vectors
    memory_bank: Optional[dict] = None  # "layer_{i}" -> (k, P, W), or None without references
    prototypes: dict = field(default_factory=dict)  # head -> (2, D)
    source: str = ""

    def memory_layers(self, layers) -> Optional[list[torch.Tensor]]:
        """The memory bank in the order of `layers` (the base's memory layers)."""
        return None if self.memory_bank is None else [self.memory_bank[f"layer_{i}"] for i in layers]


# ------------------------------------------------------------------------------------------- writing
def write_adapter(save_directory: str, record: dict, adapter_config, weights: Mapping[str, torch.Tensor],
                  memory_bank: Optional[Mapping[int, torch.Tensor]], prototypes: Mapping[str, torch.Tensor]) -> str:
    """Write an adapter folder atomically (a failed save leaves any previous folder intact).

    adapter_config: the PEFT config (has `save_pretrained`); memory_bank: memory layer -> (k, P, W) tensor.
    """
    validate_category_name(record.get("category"))  # before anything touches disk

    def as_saved(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().float().cpu().contiguous()

    with atomic_directory(save_directory) as staging:
        adapter_config.save_pretrained(staging)
        save_file({k: as_saved(v) for k, v in weights.items()}, os.path.join(staging, ADAPTER_WEIGHTS))
        save_file({head: as_saved(p) for head, p in prototypes.items()}, os.path.join(staging, PROTOTYPES_FILE))
        if memory_bank is not None:
            save_file({f"layer_{i}": as_saved(bank) for i, bank in memory_bank.items()},
                      os.path.join(staging, MEMORY_FILE))
        with open(os.path.join(staging, CATEGORY_FILE), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
        with open(os.path.join(staging, CARD_FILE), "w", encoding="utf-8") as handle:
            handle.write(render_category_card(record, os.fspath(save_directory)))
    return os.fspath(save_directory)


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class AdapterSource:
    """Where an adapter's files are: `folder` to read, `name` for messages, and for a Hub repo the names of
    all its files (`repo_files`), including those deliberately not downloaded."""

    folder: str
    name: str
    repo_files: Optional[tuple] = None


def resolve_category_folder(path_or_repo_id: str, revision: Optional[str] = None, **hub_kwargs) -> AdapterSource:
    """A local folder as is, or a Hub repo's snapshot (downloaded, or from the cache)."""
    path_or_repo_id = os.fspath(path_or_repo_id)
    if os.path.isdir(path_or_repo_id):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {path_or_repo_id} is a local folder")
        return AdapterSource(path_or_repo_id, path_or_repo_id)
    if os.path.exists(path_or_repo_id):
        raise ValueError(f"{path_or_repo_id} is a file; expected a category adapter folder or a Hub repo id")
    if looks_like_local_path(path_or_repo_id):
        raise ValueError(f"category adapter folder {path_or_repo_id} does not exist")
    try:
        validate_repo_id(path_or_repo_id)
    except ValueError as error:
        raise ValueError(f"{path_or_repo_id!r} is neither an existing category adapter folder nor a valid Hub "
                         f"repo id ({error})") from None
    snapshot = download_category(path_or_repo_id, revision=revision, filenames=LAYOUT_FILES, **hub_kwargs)
    return AdapterSource(snapshot.folder, f"Hub repo {path_or_repo_id!r} (commit {snapshot.commit})",
                         snapshot.repo_files)


def check_adapter_files(folder: str, source: str, repo_files=None) -> None:
    """Refuse an adapter whose required files are missing; name pickled stand-ins, which are never read."""
    present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    missing = [name for name in REQUIRED_FILES if name not in present]
    if not missing:
        return
    pickled = sorted(name for name in present | set(repo_files or ()) if name.endswith(PICKLE_SUFFIXES))
    if ADAPTER_WEIGHTS in missing and pickled:
        raise ValueError(f"{source} holds {pickled} but no {ADAPTER_WEIGHTS}: anomclip-hf reads only safetensors "
                         "and JSON files and never unpickles adapter weights; re-save the adapter with "
                         "save_category (or convert the weights to safetensors)")
    raise ValueError(f"{source} is not a category adapter folder: missing {missing}")


def _read_json(folder: str, filename: str, source: str):
    try:
        with open(os.path.join(folder, filename), encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: {filename} is not valid JSON ({error})") from None


def _read_tensors(folder: str, filename: str, source: str) -> dict:
    try:
        return load_file(os.path.join(folder, filename))
    except SafetensorError as error:
        raise ValueError(f"{source}: {filename} is not a readable safetensors file ({error}); it may be truncated "
                         "or corrupt: save or download the adapter again") from None


def _check_format_version(record: dict, source: str) -> None:
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{source}: {CATEGORY_FILE} has format_version {version!r}; expected an integer from 1 "
                         f"to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{source}: the adapter has format_version {version}, made by a newer anomclip-hf; this "
                         f"anomclip-hf reads format_version {FORMAT_VERSION} at most: upgrade anomclip-hf "
                         "(pip install -U anomclip-hf)")


def read_category_record(folder: str, source: Optional[str] = None, repo_files=None) -> dict:
    """Check the files of an adapter folder and return its validated category.json dict."""
    source = source or folder
    check_adapter_files(folder, source, repo_files)
    record = _read_json(folder, CATEGORY_FILE, source)
    if not isinstance(record, dict):
        raise ValueError(f"{source}: {CATEGORY_FILE} holds {type(record).__name__}; expected a JSON object")
    _check_format_version(record, source)
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{source}: {CATEGORY_FILE} lacks {missing}")
    try:
        validate_category_name(record["category"])
    except ValueError as error:
        raise ValueError(f"{source}: {CATEGORY_FILE}: {error}") from None
    if not isinstance(record["class_name"], str) or not isinstance(record["phrases"], list) or not all(
            isinstance(p, str) for p in record["phrases"]):
        raise ValueError(f"{source}: {CATEGORY_FILE}: class_name must be a string and phrases a list of strings")
    for key in ("prompt_layout", "base_model"):
        if not isinstance(record[key], dict):
            raise ValueError(f"{source}: {CATEGORY_FILE}: {key} must be a JSON object")
    return record


def read_adapter(adapter: AdapterSource) -> AdapterContents:
    """Read an adapter folder: its files, category.json (checked on its own) and every tensor file."""
    folder, source = adapter.folder, adapter.name
    record = read_category_record(folder, source, adapter.repo_files)
    config = _read_json(folder, ADAPTER_CONFIG, source)
    memory_bank = (_read_tensors(folder, MEMORY_FILE, source)
                   if os.path.isfile(os.path.join(folder, MEMORY_FILE)) else None)
    prototypes = (_read_tensors(folder, PROTOTYPES_FILE, source)
                  if os.path.isfile(os.path.join(folder, PROTOTYPES_FILE)) else {})
    return AdapterContents(record=record, adapter_config=config, weights=_read_tensors(folder, ADAPTER_WEIGHTS, source),
                           memory_bank=memory_bank, prototypes=prototypes, source=source)


def check_adapter(contents: AdapterContents, expected: AdapterExpectations) -> None:
    """Refuse an adapter made for another prompt layout or base model, or with tensors of the wrong shape,
    naming both sides."""
    source, record = contents.source, contents.record
    layout = record["prompt_layout"]
    for key in PROMPT_LAYOUT_KEYS:
        if layout.get(key) != expected.prompt_layout[key]:
            raise ValueError(f"{source}: adapter prompt layout {key}={layout.get(key)!r} differs from the model's "
                             f"{expected.prompt_layout[key]!r}")
    recorded, current = record["base_model"], expected.base_identity
    same_sizes = recorded.get("architecture") in (None, current["architecture"])  # None: not recorded
    if not same_sizes or recorded.get("fingerprint") != current["fingerprint"]:
        raise ValueError(f"{source}: adapter was made for base model {describe_base(recorded)}, but this model is "
                         f"{describe_base(current)}; load it onto the base it was made for")
    config, wanted = contents.adapter_config, expected.adapter_config
    if not isinstance(config, dict) or config.get("peft_type") != wanted["peft_type"] or \
            list(config.get("token_indices") or []) != list(wanted["token_indices"]):
        found = config.get("peft_type") if isinstance(config, dict) else config
        raise ValueError(f"{source}: {ADAPTER_CONFIG} is not the TrainableTokens config of this model's "
                         f"{len(wanted['token_indices'])} prompt tokens (found peft_type {found!r})")
    if contents.memory_bank is not None:
        memory = record.get("memory") or {}
        layers = list(expected.memory_layers)
        if sorted(contents.memory_bank) != sorted(f"layer_{i}" for i in layers) or \
                memory.get("tap") != expected.memory_tap:
            raise ValueError(f"{source}: memory bank holds {sorted(contents.memory_bank)} ({memory.get('tap')}); "
                             f"this model uses layers {layers} ({expected.memory_tap})")
        _check_shapes(contents.memory_bank, expected.vision_width, 3, MEMORY_FILE, source)
    _check_shapes(contents.prototypes, expected.projection_dim, 2, PROTOTYPES_FILE, source)
    _check_shapes(contents.weights, expected.text_width, 2, ADAPTER_WEIGHTS, source)


def _check_shapes(tensors: dict, expected_last: int, ndim: int, filename: str, source: str) -> None:
    for key, tensor in tensors.items():
        if tensor.ndim != ndim or tensor.shape[-1] != expected_last:
            raise ValueError(f"{source}: {filename} tensor {key!r} has shape {tuple(tensor.shape)}; expected "
                             f"{ndim} dimensions ending in {expected_last}")
