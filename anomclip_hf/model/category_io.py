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
and nothing named inside category.json is used as a file-system path. Every byte of it is untrusted: only
regular files inside the folder are read, each with a size limit derived from the base (`safe_read`);
category.json must match `RECORD_SCHEMA`, and every tensor its exact shape, float32 and finite values.

This module reads and writes (record, tensors) and checks them against what a base model expects
(`AdapterExpectations`); the functions at its end save a model's category and load one into its category bank
(the model is passed in, never imported). Every refusal is an `AdapterError` (a ValueError).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from ..errors import AdapterError
from ..hub.download import download_category
from ..hub.model_card import render_category_card
from ..hub.validation import looks_like_local_path, validate_repo_id
from ..io.atomic_io import atomic_directory, recover_directory
from ..io.safe_read import read_regular_file
from ..memory.dino_settings import describe_memory_backbone
from .adapter_schema import (  # noqa: F401 (RECORD_SCHEMA: re-exported, the schema the docs cite)
    CATEGORY_FILE,
    CORESET_FORMAT_VERSION,
    EXACT_FORMAT_VERSION,
    FORMAT_VERSION,
    MAX_DEPTH,
    RECORD_SCHEMA,
    check_format_version,
    show_value,
    validate_record,
)
from .category import (
    HEADS,
    MAX_SHOTS,
    METADATA_KEYS,
    PROMPT_LAYOUT_KEYS,
    CategoryState,
    base_model_architecture,
    base_model_fingerprint,
    describe_base,
    validate_category_name,
)
from .memory_backbone import memory_backbone_identity, memory_layout
from .prompt_learner import ADAPTER_WEIGHT_KEYS
from .prompt_text import checked_prototypes, head_prompts_of
from .sanity import check_prototypes, check_unit_rows

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MEMORY_FILE = "memory_bank.safetensors"
PROTOTYPES_FILE = "text_prototypes.safetensors"
CARD_FILE = "README.md"
LAYOUT_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CATEGORY_FILE, MEMORY_FILE, PROTOTYPES_FILE, CARD_FILE)
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CATEGORY_FILE)
# Files that would need unpickling; an adapter holding only these is refused, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_JSON_BYTES = 4 << 20  # category.json / adapter_config.json: a few KB when saved, MBs only if hostile
# A safetensors header (JSON: name, dtype, shape, offsets per tensor) of a handful of tensors is < 1 KB.
TENSOR_HEADER_SLACK = 64 << 10


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
    num_patches: int  # (image_size / patch_size)^2
    adapter_config: Mapping  # the PEFT config the prompt vectors must have (peft_type, token_indices)
    weight_keys: tuple  # the keys of the PEFT state dict of the prompt vectors
    memory_backbone: Optional[Mapping] = None  # the DINOv2 memory's identity (category.json memory.backbone)

    def tensor_shapes(self, filename: str, shots: int = 0, coreset_size: Optional[int] = None) -> dict:
        """The exact {key: shape} of a tensor file (the memory bank: of `shots` references, or a coreset of
        `coreset_size` rows per layer)."""
        if filename == ADAPTER_WEIGHTS:
            return {key: (len(self.adapter_config["token_indices"]), self.text_width) for key in self.weight_keys}
        if filename == PROTOTYPES_FILE:
            return {head: (2, self.projection_dim) for head in HEADS}
        if filename == MEMORY_FILE and coreset_size is not None:
            return {f"layer_{i}": (coreset_size, self.vision_width) for i in self.memory_layers}
        if filename == MEMORY_FILE:
            return {f"layer_{i}": (shots, self.num_patches, self.vision_width) for i in self.memory_layers}
        raise AdapterError(f"{filename} holds no tensors")

    def size_limit(self, filename: str) -> int:
        """Bytes a file of the layout may have on this base (the memory bank: MAX_SHOTS references)."""
        if filename.endswith(".json"):
            return MAX_JSON_BYTES
        values = sum(math.prod(shape) for shape in self.tensor_shapes(filename, MAX_SHOTS).values())
        return 4 * values + TENSOR_HEADER_SLACK


@dataclass
class AdapterContents:
    """An adapter folder read into memory: category.json and the tensors of each file."""

    record: dict
    adapter_config: dict
    weights: dict  # PEFT state dict of the prompt vectors
    memory_bank: Optional[dict] = None  # "layer_{i}" -> (k, P, W), or None without references
    prototypes: dict = field(default_factory=dict)  # head -> (2, D), or {} (computed from the prompts)
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
    # Never write an adapter that would not load: the record as it will read back (tuples become lists).
    validate_record(json.loads(json.dumps(record)), os.fspath(save_directory))

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
    all its files (`repo_files`), including those deliberately not downloaded. `root`: the folder the files
    (links included) must lie in; the folder itself, or for a Hub snapshot the cached repo folder whose
    blobs its links point to."""

    folder: str
    name: str
    repo_files: Optional[tuple] = None
    root: Optional[str] = None

    @property
    def allowed_root(self) -> str:
        return self.root or self.folder


def resolve_category_folder(path_or_repo_id: str, revision: Optional[str] = None, **hub_kwargs) -> AdapterSource:
    """A local folder as is, or a Hub repo's snapshot (downloaded, or from the cache)."""
    path_or_repo_id = os.fspath(path_or_repo_id)
    if not os.path.lexists(path_or_repo_id) and looks_like_local_path(path_or_repo_id):
        with contextlib.suppress(OSError):  # a save killed between its renames left the adapter as a backup
            recover_directory(path_or_repo_id)
    if os.path.isdir(path_or_repo_id):
        if revision is not None:
            raise AdapterError(f"revision={revision!r} applies to Hub repos, but {path_or_repo_id} is a local folder")
        return AdapterSource(path_or_repo_id, path_or_repo_id)
    if os.path.exists(path_or_repo_id):
        raise AdapterError(f"{path_or_repo_id} is a file; expected a category adapter folder or a Hub repo id")
    if looks_like_local_path(path_or_repo_id):
        raise AdapterError(f"category adapter folder {path_or_repo_id} does not exist")
    try:
        validate_repo_id(path_or_repo_id)
    except ValueError as error:
        raise AdapterError(f"{path_or_repo_id!r} is neither an existing category adapter folder nor a valid Hub "
                         f"repo id ({error})") from None
    snapshot = download_category(path_or_repo_id, revision=revision, filenames=LAYOUT_FILES, **hub_kwargs)
    return AdapterSource(snapshot.folder, f"Hub repo {path_or_repo_id!r} (commit {snapshot.commit})",
                         snapshot.repo_files, snapshot.repo_folder)


def check_adapter_files(folder: str, source: str, repo_files=None) -> None:
    """Refuse an adapter whose required files are missing; name pickled stand-ins, which are never read."""
    present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    missing = [name for name in REQUIRED_FILES if name not in present]
    if not missing:
        return
    pickled = sorted(name for name in present | set(repo_files or ()) if name.endswith(PICKLE_SUFFIXES))
    if ADAPTER_WEIGHTS in missing and pickled:
        raise AdapterError(f"{source} holds {pickled} but no {ADAPTER_WEIGHTS}: anomclip-hf reads only safetensors "
                         "and JSON files and never unpickles adapter weights; re-save the adapter with "
                         "save_category (or convert the weights to safetensors)")
    raise AdapterError(f"{source} is not a category adapter folder: missing {missing}")


def _read_bytes(folder: str, filename: str, source: str, root: str, limit: int) -> bytes:
    return read_regular_file(os.path.join(folder, filename), root, limit, f"{source}: {filename}")


def _read_json(folder: str, filename: str, source: str, root: Optional[str] = None):
    data = _read_bytes(folder, filename, source, root or folder, MAX_JSON_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"{source}: {filename} is not valid JSON ({error})") from None
    except RecursionError:
        raise AdapterError(f"{source}: {filename} is nested too deeply to be an adapter file (expected at most "
                         f"{MAX_DEPTH} levels)") from None


def _read_tensors(adapter: AdapterSource, filename: str, limit: int) -> dict:
    data = _read_bytes(adapter.folder, filename, adapter.name, adapter.allowed_root, limit)
    try:
        return load_tensors(data)
    except SafetensorError as error:
        raise AdapterError(f"{adapter.name}: {filename} is not a readable safetensors file ({error}); it may be "
                         "truncated or corrupt: save or download the adapter again") from None


def read_category_record(folder: str, source: Optional[str] = None, repo_files=None,
                         root: Optional[str] = None) -> dict:
    """Check the files of an adapter folder and return its validated category.json dict."""
    source = source or folder
    check_adapter_files(folder, source, repo_files)
    return validate_record(_read_json(folder, CATEGORY_FILE, source, root), source)


def read_adapter(adapter: AdapterSource, expected: AdapterExpectations) -> AdapterContents:
    """Read an adapter folder: its files, category.json (checked against the schema) and every tensor file,
    each within the size `expected` (the base) allows. Optional files that are present are read (a link or
    an unreadable file is an error, never a silent fallback)."""
    folder, source = adapter.folder, adapter.name
    record = read_category_record(folder, source, adapter.repo_files, adapter.allowed_root)
    config = _read_json(folder, ADAPTER_CONFIG, source, adapter.allowed_root)

    def optional(filename):
        present = os.path.lexists(os.path.join(folder, filename))
        return _read_tensors(adapter, filename, expected.size_limit(filename)) if present else None

    return AdapterContents(record=record, adapter_config=config,
                           weights=_read_tensors(adapter, ADAPTER_WEIGHTS, expected.size_limit(ADAPTER_WEIGHTS)),
                           memory_bank=optional(MEMORY_FILE), prototypes=optional(PROTOTYPES_FILE) or {},
                           source=source)


# ------------------------------------------------------------------------------------------- checking
def check_adapter(contents: AdapterContents, expected: AdapterExpectations) -> None:
    """Refuse an adapter made for another prompt layout or base model, or whose tensors are not exactly
    what this base needs (keys, shapes, float32, finite), naming the file and what was expected."""
    source, record = contents.source, contents.record
    layout = record["prompt_layout"]
    for key in PROMPT_LAYOUT_KEYS:
        if layout.get(key) != expected.prompt_layout[key]:
            raise AdapterError(f"{source}: adapter prompt layout {key}={layout.get(key)!r} differs from the model's "
                             f"{expected.prompt_layout[key]!r}")
    recorded, current = record["base_model"], expected.base_identity
    same_sizes = recorded.get("architecture") in (None, current["architecture"])  # None: not recorded
    if not same_sizes or recorded.get("fingerprint") != current["fingerprint"]:
        raise AdapterError(f"{source}: adapter was made for base model {describe_base(recorded)}, but this model is "
                         f"{describe_base(current)}; load it onto the base it was made for")
    config, wanted = contents.adapter_config, expected.adapter_config
    if not isinstance(config, dict) or config.get("peft_type") != wanted["peft_type"] or \
            config.get("token_indices") != list(wanted["token_indices"]):
        found = config.get("peft_type") if isinstance(config, dict) else show_value(config)
        raise AdapterError(f"{source}: {ADAPTER_CONFIG} is not the TrainableTokens config of this model's "
                         f"{len(wanted['token_indices'])} prompt tokens (found peft_type {found!r})")
    _check_memory_backbone(contents, expected)  # before the bank: a clear "made with another memory"
    _check_memory(contents, expected)
    if contents.memory_bank is not None:  # scaled rows would make every cosine huge (score 0) or ~0 (0.5)
        check_unit_rows(contents.memory_bank, f"{source}: {MEMORY_FILE} tensor", AdapterError)
    if contents.prototypes:  # absent: computed from the prompt vectors when loaded (and checked the same way)
        _check_tensors(contents.prototypes, expected.tensor_shapes(PROTOTYPES_FILE), PROTOTYPES_FILE, source)
        check_prototypes(contents.prototypes, f"{source}: {PROTOTYPES_FILE} tensor", AdapterError)
    _check_tensors(contents.weights, expected.tensor_shapes(ADAPTER_WEIGHTS), ADAPTER_WEIGHTS, source)


def _check_memory_backbone(contents: AdapterContents, expected: AdapterExpectations) -> None:
    """An adapter made with a DINOv2 memory loads only onto a base with the same one, and one made with the
    CLIP memory only onto a base without; the error names both (recorded with or without a memory bank)."""
    recorded = (contents.record.get("memory") or {}).get("backbone")
    current = expected.memory_backbone
    keys = ("model_type", "architecture", "fingerprint")
    if recorded is None and current is None:
        return
    if recorded is not None and current is not None and all(recorded.get(k) == current.get(k) for k in keys):
        return
    if current is None:
        hint = (f"load the base with --memory-backbone {recorded.get('name_or_path')} (memory_backbone="
                f"{recorded.get('name_or_path')!r})")
    elif recorded is None:
        hint = "load it onto a base without a memory backbone"
    else:
        hint = "load the base with the memory backbone the adapter was made with"
    raise AdapterError(f"{contents.source}: adapter was made with memory backbone {describe_memory_backbone(recorded)}, "
                     f"but this model's memory backbone is {describe_memory_backbone(current)}; {hint}")


def _check_memory(contents: AdapterContents, expected: AdapterExpectations) -> None:
    """The memory bank the record describes: present iff shots > 0, k = shots in every layer, the base's
    memory layers, tap, patch count and width."""
    source, record = contents.source, contents.record
    shots = record["shots"]
    if contents.memory_bank is None:
        if shots:
            raise AdapterError(f"{source}: {CATEGORY_FILE} field 'shots' is {shots} but {MEMORY_FILE} is missing; "
                             "expected the memory bank of those references (download or save the adapter again)")
        if record.get("threshold_estimate") is not None:
            raise AdapterError(f"{source}: {CATEGORY_FILE} field 'threshold_estimate' is estimated from reference "
                             f"images but there is no {MEMORY_FILE}; expected null without references")
        return
    if not shots:
        raise AdapterError(f"{source}: {CATEGORY_FILE} field 'shots' is 0 but there is a {MEMORY_FILE}; expected "
                         "the number of reference images in it")
    memory = record.get("memory") or {}
    layers = list(expected.memory_layers)
    if memory.get("layers") != layers or memory.get("tap") != expected.memory_tap:
        raise AdapterError(f"{source}: {CATEGORY_FILE} field 'memory' is {show_value(record.get('memory'))}; this model "
                         f"uses memory layers {layers} ({expected.memory_tap})")
    if memory.get("coreset") is not None:
        _check_coreset(contents, expected)
        return
    if shots > MAX_SHOTS:
        raise AdapterError(f"{source}: {CATEGORY_FILE} field 'shots' is {shots} with an exact memory bank; expected at "
                         f"most {MAX_SHOTS} (larger reference sets are kept as a coreset, 'memory.coreset')")
    _check_tensors(contents.memory_bank, expected.tensor_shapes(MEMORY_FILE, shots), MEMORY_FILE, source,
                   f"(k = shots {shots} of {CATEGORY_FILE}, {expected.num_patches} patches, width "
                   f"{expected.vision_width})")


def _check_coreset(contents: AdapterContents, expected: AdapterExpectations) -> None:
    """A coreset bank: format 2, one radius per layer, size <= rows = shots x patches <= what loading may read,
    and (size, width) tensors of this base's width."""
    source, record = contents.source, contents.record
    coreset, shots = record["memory"]["coreset"], record["shots"]
    field = f"{CATEGORY_FILE} field 'memory.coreset"
    if record["format_version"] < CORESET_FORMAT_VERSION:
        raise AdapterError(f"{source}: {CATEGORY_FILE} has format_version {record['format_version']} but a "
                         f"'memory.coreset'; expected format_version {CORESET_FORMAT_VERSION} or later with a coreset")
    if len(coreset["coverage_radius"]) != len(expected.memory_layers):
        raise AdapterError(f"{source}: {field}.coverage_radius' has {len(coreset['coverage_radius'])} values; expected "
                         f"one per memory layer {list(expected.memory_layers)}")
    if coreset["rows"] != shots * expected.num_patches:
        raise AdapterError(f"{source}: {field}.rows' is {coreset['rows']}; expected shots x patches = {shots} x "
                         f"{expected.num_patches} = {shots * expected.num_patches}")
    most = min(coreset["rows"], MAX_SHOTS * expected.num_patches)
    if coreset["size"] > most:
        raise AdapterError(f"{source}: {field}.size' is {coreset['size']}; expected at most {most} rows (the bank's "
                         f"rows, and at most {MAX_SHOTS} x {expected.num_patches} patches)")
    _check_tensors(contents.memory_bank, expected.tensor_shapes(MEMORY_FILE, coreset_size=coreset["size"]),
                   MEMORY_FILE, source, f"(M = memory.coreset.size {coreset['size']} of {CATEGORY_FILE}, width "
                   f"{expected.vision_width} of this base)")


def _check_tensors(tensors: dict, shapes: dict, filename: str, source: str, why: str = "") -> None:
    """Exactly these keys, each of its shape, float32 (as save_category writes) and finite."""
    if sorted(tensors) != sorted(shapes):
        raise AdapterError(f"{source}: {filename} holds tensors {sorted(tensors)}; expected exactly {sorted(shapes)}")
    for key in sorted(tensors):  # a fixed order: the same file gives the same message
        tensor = tensors[key]
        if tuple(tensor.shape) != shapes[key]:
            raise AdapterError(f"{source}: {filename} tensor {key!r} has shape {tuple(tensor.shape)}; expected "
                             f"{shapes[key]} {why}".rstrip())
        if tensor.dtype != torch.float32:
            raise AdapterError(f"{source}: {filename} tensor {key!r} is {tensor.dtype}; expected torch.float32")
        # amax/amin propagate NaN and are the extremes: both finite iff every value is (no mask allocated).
        if tensor.numel() and not (torch.isfinite(tensor.amax()) and torch.isfinite(tensor.amin())):
            bad = int((~torch.isfinite(tensor)).sum())
            raise AdapterError(f"{source}: {filename} tensor {key!r} holds {bad} NaN or infinite values; expected "
                             "finite values")


# ------------------------------------------------------------------------------------------- a model's categories
def base_identity(model) -> dict:
    """category.json "base_model": which base an adapter was made for (checked when it is loaded)."""
    config = model.config
    identity = {"name_or_path": config.base_model_name_or_path, "revision": config.base_model_revision,
                "architecture": base_model_architecture(config.clip_config),
                "fingerprint": base_model_fingerprint(model.clip, config.prompt_token_ids)}
    if config.random_weights:  # its adapters' model cards then say PIPELINE CHECK
        identity["random_weights"] = True
    return identity


def adapter_expectations(model) -> AdapterExpectations:
    """What an adapter must match to load onto `model`'s base."""
    config, clip = model.config, model.config.clip_config
    adapter_config = model.category_bank.prompt_tokens.adapter_config()
    memory = memory_layout(model)
    return AdapterExpectations(
        prompt_layout={key: getattr(config, key) for key in PROMPT_LAYOUT_KEYS},
        base_identity=base_identity(model), memory_layers=memory.layers,
        memory_tap=memory.tap, vision_width=memory.width,
        projection_dim=clip.projection_dim, text_width=clip.text_config.hidden_size,
        num_patches=memory.num_patches, memory_backbone=memory_backbone_identity(model),
        adapter_config={"peft_type": adapter_config.peft_type.value,
                        "token_indices": list(adapter_config.token_indices)},
        weight_keys=ADAPTER_WEIGHT_KEYS)


def category_record(model, name: Optional[str] = None) -> dict:
    """The category.json content of `model`'s category `name` (default: the active one)."""
    state, config = model.get_category(name), model.config
    layout = memory_layout(model)
    memory = {"layers": list(layout.layers), "tap": layout.tap}
    if model.memory_backbone is not None:
        memory["backbone"] = memory_backbone_identity(model)
    if state.coreset is not None:
        memory["coreset"] = state.coreset
    return {
        "format_version": EXACT_FORMAT_VERSION if state.coreset is None else CORESET_FORMAT_VERSION,
        "category": state.name,
        "class_name": state.class_name,
        "phrases": state.phrases,
        "learned_prompts": state.learned_prompts,
        "prompt_layout": {
            **{key: getattr(config, key) for key in PROMPT_LAYOUT_KEYS},
            "prompt_token_names": config.prompt_token_names,
            "prompt_token_ids": config.prompt_token_ids,
            "prompts": {head: vars(head_prompts_of(config, state, head)) for head in HEADS},
        },
        "base_model": base_identity(model),
        "memory": memory,
        "shots": state.shots,
        **{key: state.metadata.get(key) for key in METADATA_KEYS},
    }


def save_category(model, save_directory: str, name: Optional[str] = None) -> str:
    """Write `model`'s category `name` (default: the active one) as an adapter folder, atomically."""
    key = name or model.active_category  # its key in the bank; the record says state.name (checked on write)
    bank, table = model.get_category(key).memory_bank, model.category_bank.prompt_tokens
    return write_adapter(
        save_directory, category_record(model, key), table.adapter_config(), table.adapter_state_dict(key),
        None if bank is None else dict(zip(memory_layout(model).layers, bank)), model.text_prototypes(key))


def load_category(model, path_or_repo_id: str, name: Optional[str] = None, activate: bool = True,
                  revision: Optional[str] = None, **hub_kwargs) -> CategoryState:
    """Read, check, then hold an adapter in `model`'s category bank; a load that fails changes nothing."""
    if name is not None:
        validate_category_name(name)
    expected = adapter_expectations(model)
    contents = read_adapter(resolve_category_folder(path_or_repo_id, revision=revision, **hub_kwargs), expected)
    check_adapter(contents, expected)
    record = contents.record
    state = CategoryState(
        name=name or record["category"], class_name=record["class_name"], phrases=record["phrases"],
        learned_prompts=bool(record["learned_prompts"]),
        memory_bank=contents.memory_layers(expected.memory_layers), prototypes=contents.prototypes,
        metadata={key: record.get(key) for key in METADATA_KEYS},
        coreset=(record.get("memory") or {}).get("coreset"), shots=record["shots"]).to(model.device)
    if not state.prototypes:  # none stored: computed from the adapter's vectors now, refused if degenerate
        vectors = contents.weights[ADAPTER_WEIGHT_KEYS[0]].to(model.device)
        where = (f"{contents.source}: {ADAPTER_WEIGHTS} (no stored prototypes): the text prototypes computed from "
                 f"its prompt vectors (largest |value| {float(vectors.abs().max()):.3g}), head")
        state.prototypes = checked_prototypes(model, state, vectors, where, AdapterError)
    return model.category_bank.load(state, contents.weights, activate)
