"""Category adapter folders (one folder = one Hub repo).

```
adapter_config.json          PEFT TrainableTokens config of the prompt vectors (rows of the prompt table)
adapter_model.safetensors    the learned vectors
category.json                class name, phrases, prompt layout, base model, shots, seed, summary, threshold
memory_bank.safetensors      reference patch features, one (k, patches, width) tensor per memory layer
text_prototypes.safetensors  cached [normal, anomaly] prototypes per head, so loading never runs the text tower
README.md                    model card
```
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from safetensors.torch import load_file, save_file

from .atomic_io import atomic_directory
from .model_card import render_category_card

FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CATEGORY_FILE = "category.json"
MEMORY_FILE = "memory_bank.safetensors"
PROTOTYPES_FILE = "text_prototypes.safetensors"
CARD_FILE = "README.md"
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CATEGORY_FILE)
_LAYOUT_KEYS = ("n_ctx", "n_prompts_image", "n_prompts_pixel", "n_anomaly_ctx", "n_anomaly_prompts",
                "anomaly_token_position")


def base_model_fingerprint(model) -> str:
    """A short hash of the frozen CLIP weights that matter for an adapter (projections, token rows)."""
    digest = hashlib.sha256()
    clip = model.clip
    for tensor in (clip.visual_projection.weight, clip.text_projection.weight,
                   clip.text_model.embeddings.token_embedding.weight[:256], clip.logit_scale):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(model.config.prompt_token_ids).encode())
    return digest.hexdigest()[:16]


def category_record(model, state) -> dict:
    """The category.json content of a category."""
    config = model.config
    metadata = state.metadata
    return {
        "format_version": FORMAT_VERSION,
        "category": state.name,
        "class_name": state.class_name,
        "phrases": state.phrases,
        "learned_prompts": state.learned_prompts,
        "prompt_layout": {
            **{key: getattr(config, key) for key in _LAYOUT_KEYS},
            "prompt_token_names": config.prompt_token_names,
            "prompts": {head: vars(model.head_prompts(state.name, head)) for head in ("image", "pixel")},
        },
        "base_model": {"name_or_path": config.base_model_name_or_path, "revision": config.base_model_revision,
                       "fingerprint": base_model_fingerprint(model)},
        "memory": {"layers": config.resolved_memory_layers, "tap": config.memory_tap},
        "shots": state.shots,
        "seed": metadata.get("seed"),
        "reference_files": metadata.get("reference_files"),
        "training": metadata.get("training"),
        "evaluation": metadata.get("evaluation"),
        "decision_threshold": metadata.get("decision_threshold"),
    }


def save_category(model, state, save_directory: str) -> str:
    """Write the adapter folder of `state` atomically (a failed save leaves any previous folder intact)."""
    record = category_record(model, state)
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
            handle.write(render_category_card(record, save_directory))
    return save_directory


def resolve_category_folder(path_or_repo_id: str, **hub_kwargs) -> str:
    """A local folder as is; otherwise a Hub repo id downloaded (or taken from the cache) as a snapshot."""
    if os.path.isdir(path_or_repo_id):
        return path_or_repo_id
    if os.path.exists(path_or_repo_id):
        raise ValueError(f"{path_or_repo_id} is a file; expected a category adapter folder or a Hub repo id")
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_repo_id, **hub_kwargs)


def _check_compatible(model, record: dict, folder: str) -> None:
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: category format_version {record.get('format_version')} is not supported "
                         f"(expected {FORMAT_VERSION})")
    layout = record["prompt_layout"]
    for key in _LAYOUT_KEYS:
        if layout.get(key) != getattr(model.config, key):
            raise ValueError(f"{folder}: adapter prompt layout {key}={layout.get(key)!r} differs from the model's "
                             f"{getattr(model.config, key)!r}")
    expected, found = base_model_fingerprint(model), record["base_model"].get("fingerprint")
    if found != expected:
        raise ValueError(f"{folder}: adapter was made for base model {record['base_model'].get('name_or_path')!r} "
                         f"(fingerprint {found}), but this model is {model.config.base_model_name_or_path!r} "
                         f"(fingerprint {expected})")


def load_category(model, path_or_repo_id: str, name: Optional[str] = None, activate: bool = True, **hub_kwargs):
    """Load an adapter folder or Hub repo into `model` as category `name` (default: its saved name)."""
    from .modeling_anomclip import CategoryState

    folder = resolve_category_folder(path_or_repo_id, **hub_kwargs)
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ValueError(f"{folder} is not a category adapter folder: missing {missing}")
    with open(os.path.join(folder, CATEGORY_FILE), encoding="utf-8") as handle:
        record = json.load(handle)
    _check_compatible(model, record, folder)
    memory_bank = None
    if os.path.isfile(os.path.join(folder, MEMORY_FILE)):
        tensors = load_file(os.path.join(folder, MEMORY_FILE))
        layers = model.config.resolved_memory_layers
        if sorted(tensors) != sorted(f"layer_{i}" for i in layers) or record["memory"]["tap"] != model.config.memory_tap:
            raise ValueError(f"{folder}: memory bank holds {sorted(tensors)} ({record['memory']['tap']}); this model "
                             f"uses layers {layers} ({model.config.memory_tap})")
        memory_bank = [tensors[f"layer_{i}"].to(model.device) for i in layers]
    prototypes = {}
    if os.path.isfile(os.path.join(folder, PROTOTYPES_FILE)):
        prototypes = {k: v.to(model.device) for k, v in load_file(os.path.join(folder, PROTOTYPES_FILE)).items()}
    name = name or record["category"]
    state = CategoryState(
        name=name, class_name=record["class_name"], phrases=list(record["phrases"]),
        learned_prompts=bool(record["learned_prompts"]), memory_bank=memory_bank, prototypes=prototypes,
        metadata={key: record.get(key) for key in ("seed", "reference_files", "training", "evaluation",
                                                   "decision_threshold")},
    )
    weights = {k: v.to(model.device) for k, v in load_file(os.path.join(folder, ADAPTER_WEIGHTS)).items()}
    model.prompt_tokens.load_adapter_state_dict(name, weights)
    return model.register_category(state, activate)
