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
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic_io import atomic_directory
from .hub.validation import looks_like_local_path, validate_category_name, validate_repo_id
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
_LAYOUT_KEYS = ("n_ctx", "n_prompts_image", "n_prompts_pixel", "n_anomaly_ctx", "n_anomaly_prompts",
                "anomaly_token_position")
_RECORD_KEYS = ("format_version", "category", "class_name", "phrases", "learned_prompts", "prompt_layout",
                "base_model")


# ------------------------------------------------------------------------------------------- base identity
def base_model_fingerprint(model) -> str:
    """A short hash of the frozen CLIP weights that matter for an adapter (projections, token rows)."""
    digest = hashlib.sha256()
    clip = model.clip
    for tensor in (clip.visual_projection.weight, clip.text_projection.weight,
                   clip.text_model.embeddings.token_embedding.weight[:256], clip.logit_scale):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(model.config.prompt_token_ids).encode())
    return digest.hexdigest()[:16]


def base_model_architecture(model) -> dict:
    """The sizes of the wrapped CLIP that an adapter's tensors depend on."""
    clip = model.config.clip_config
    vision, text = clip.vision_config, clip.text_config
    return {"vision_hidden_size": vision.hidden_size, "vision_layers": vision.num_hidden_layers,
            "image_size": vision.image_size, "patch_size": vision.patch_size,
            "text_hidden_size": text.hidden_size, "text_layers": text.num_hidden_layers,
            "vocab_size": text.vocab_size, "projection_dim": clip.projection_dim}


def base_model_identity(model) -> dict:
    """category.json "base_model": which base an adapter was made for (checked when it is loaded)."""
    config = model.config
    identity = {"name_or_path": config.base_model_name_or_path, "revision": config.base_model_revision,
                "architecture": base_model_architecture(model), "fingerprint": base_model_fingerprint(model)}
    if getattr(config, "random_weights", False):  # its model card then says PIPELINE CHECK
        identity["random_weights"] = True
    return identity


def _describe_base(identity: dict) -> str:
    arch = identity.get("architecture") or {}
    sizes = (f"vision {arch.get('vision_layers')}x{arch.get('vision_hidden_size')}, text "
             f"{arch.get('text_layers')}x{arch.get('text_hidden_size')}, image {arch.get('image_size')}/patch "
             f"{arch.get('patch_size')}, projection {arch.get('projection_dim')}") if arch else "sizes not recorded"
    return (f"{identity.get('name_or_path')!r} (revision {identity.get('revision')}, {sizes}, "
            f"fingerprint {identity.get('fingerprint')})")


# ------------------------------------------------------------------------------------------- writing
def category_record(model, state) -> dict:
    """The category.json content of a category."""
    config = model.config
    metadata = state.metadata
    return {
        "format_version": FORMAT_VERSION,
        "category": validate_category_name(state.name),
        "class_name": state.class_name,
        "phrases": state.phrases,
        "learned_prompts": state.learned_prompts,
        "prompt_layout": {
            **{key: getattr(config, key) for key in _LAYOUT_KEYS},
            "prompt_token_names": config.prompt_token_names,
            "prompt_token_ids": config.prompt_token_ids,
            "prompts": {head: vars(model.head_prompts(state.name, head)) for head in ("image", "pixel")},
        },
        "base_model": base_model_identity(model),
        "memory": {"layers": config.resolved_memory_layers, "tap": config.memory_tap},
        "shots": state.shots,
        "seed": metadata.get("seed"),
        "reference_files": metadata.get("reference_files"),
        "training": metadata.get("training"),
        "evaluation": metadata.get("evaluation"),
        "decision_threshold": metadata.get("decision_threshold"),
        "pixel_threshold": metadata.get("pixel_threshold"),
        "threshold_estimate": metadata.get("threshold_estimate"),
    }


def save_category(model, state, save_directory: str) -> str:
    """Write the adapter folder of `state` atomically (a failed save leaves any previous folder intact)."""
    record = category_record(model, state)  # validates the name before anything touches disk
    prototypes = model.text_prototypes(state.name)
    with atomic_directory(save_directory) as staging:
        model.prompt_tokens.adapter_config().save_pretrained(staging)
        weights = {k: v.detach().float().cpu().contiguous()
                   for k, v in model.prompt_tokens.adapter_state_dict(state.name).items()}
        save_file(weights, os.path.join(staging, ADAPTER_WEIGHTS))
        save_file({head: p.detach().float().cpu().contiguous() for head, p in prototypes.items()},
                  os.path.join(staging, PROTOTYPES_FILE))
        if state.memory_bank is not None:
            layers = model.config.resolved_memory_layers
            save_file({f"layer_{i}": bank.detach().float().cpu().contiguous() for i, bank in zip(layers, state.memory_bank)},
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
    from .hub.download import download_category

    snapshot = download_category(path_or_repo_id, revision=revision, **hub_kwargs)
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


def check_compatible(model, record: dict, source: str) -> None:
    """Refuse an adapter made for another prompt layout or another base model, naming both sides."""
    layout = record["prompt_layout"]
    for key in _LAYOUT_KEYS:
        if layout.get(key) != getattr(model.config, key):
            raise ValueError(f"{source}: adapter prompt layout {key}={layout.get(key)!r} differs from the model's "
                             f"{getattr(model.config, key)!r}")
    recorded, current = record["base_model"], base_model_identity(model)
    same_sizes = recorded.get("architecture") in (None, current["architecture"])  # None: not recorded
    if not same_sizes or recorded.get("fingerprint") != current["fingerprint"]:
        raise ValueError(f"{source}: adapter was made for base model {_describe_base(recorded)}, but this model is "
                         f"{_describe_base(current)}; load it onto the base it was made for")


def _check_adapter_config(model, folder: str, source: str) -> None:
    config = _read_json(folder, ADAPTER_CONFIG, source)
    expected = model.prompt_tokens.adapter_config()
    if not isinstance(config, dict) or config.get("peft_type") != "TRAINABLE_TOKENS" or \
            list(config.get("token_indices") or []) != list(expected.token_indices):
        found = config.get("peft_type") if isinstance(config, dict) else config
        raise ValueError(f"{source}: {ADAPTER_CONFIG} is not the TrainableTokens config of this model's "
                         f"{len(expected.token_indices)} prompt tokens (found peft_type {found!r})")


def _check_shapes(tensors: dict, expected_last: int, ndim: int, filename: str, source: str) -> None:
    for key, tensor in tensors.items():
        if tensor.ndim != ndim or tensor.shape[-1] != expected_last:
            raise ValueError(f"{source}: {filename} tensor {key!r} has shape {tuple(tensor.shape)}; expected "
                             f"{ndim} dimensions ending in {expected_last}")


def load_category(model, path_or_repo_id: str, name: Optional[str] = None, activate: bool = True,
                  revision: Optional[str] = None, **hub_kwargs):
    """Load an adapter folder or Hub repo (at `revision`) into `model` as category `name` (default: its saved
    name). Everything is checked before the model changes."""
    from .modeling_anomclip import CategoryState

    if name is not None:
        validate_category_name(name)
    adapter = resolve_category_folder(path_or_repo_id, revision=revision, **hub_kwargs)
    folder, source = adapter.folder, adapter.name
    record = read_category_record(folder, source, adapter.repo_files)
    check_compatible(model, record, source)
    _check_adapter_config(model, folder, source)
    config = model.config
    memory_bank = None
    if os.path.isfile(os.path.join(folder, MEMORY_FILE)):
        tensors = _read_tensors(folder, MEMORY_FILE, source)
        layers = config.resolved_memory_layers
        memory = record.get("memory") or {}
        if sorted(tensors) != sorted(f"layer_{i}" for i in layers) or memory.get("tap") != config.memory_tap:
            raise ValueError(f"{source}: memory bank holds {sorted(tensors)} ({memory.get('tap')}); this model "
                             f"uses layers {layers} ({config.memory_tap})")
        _check_shapes(tensors, config.clip_config.vision_config.hidden_size, 3, MEMORY_FILE, source)
        memory_bank = [tensors[f"layer_{i}"].to(model.device) for i in layers]
    prototypes = {}
    if os.path.isfile(os.path.join(folder, PROTOTYPES_FILE)):
        prototypes = _read_tensors(folder, PROTOTYPES_FILE, source)
        _check_shapes(prototypes, config.clip_config.projection_dim, 2, PROTOTYPES_FILE, source)
        prototypes = {k: v.to(model.device) for k, v in prototypes.items()}
    weights = _read_tensors(folder, ADAPTER_WEIGHTS, source)
    _check_shapes(weights, config.clip_config.text_config.hidden_size, 2, ADAPTER_WEIGHTS, source)
    name = name or record["category"]
    state = CategoryState(
        name=name, class_name=record["class_name"], phrases=list(record["phrases"]),
        learned_prompts=bool(record["learned_prompts"]), memory_bank=memory_bank, prototypes=prototypes,
        metadata={key: record.get(key) for key in ("seed", "reference_files", "training", "evaluation",
                                                   "decision_threshold", "pixel_threshold",
                                                   "threshold_estimate")},
    )
    model.prompt_tokens.load_adapter_state_dict(name, {k: v.to(model.device) for k, v in weights.items()})
    return model.register_category(state, activate)
