"""A category: what one adapter adds to a base model, and the names every other module shares.

The bottom of `model/`: it imports nothing of the package but `errors` and the category-name rule
(`hub.validation`, which guards every name that reaches the disk or the Hub), so the configuration, prompts, adapter I/O and the model
can all take their names from here without import cycles.

- `CategoryState`: a category's tensors as module state (buffers), so `.to()`, `.half()`, `state_dict()`
  and accelerate's device placement move them with the model; its text and metadata as plain attributes.
- `HEADS` and the one function that names prompt tokens.
- The category-name rule and the keys of the prompt layout and of the metadata an adapter records.
- The base identity: which base model an adapter was made for.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ArgumentError
from ..hub.validation import validate_category_name  # noqa: F401 (re-exported: the rule every module uses)

HEADS = ("image", "pixel")
# Prompt-token prefix of each head: <img_n0_0> is image-head normal prompt 0, context vector 0.
_HEAD_TOKEN_PREFIX = {"image": "img", "pixel": "pix"}

# AnomCLIPConfig settings that fix the prompt tokens (their number and names) ...
PROMPT_TOKEN_KEYS = ("n_ctx", "n_prompts_image", "n_prompts_pixel", "n_anomaly_ctx", "n_anomaly_prompts")
# ... and, with the anomaly token's place, the prompt text; an adapter records them.
PROMPT_LAYOUT_KEYS = PROMPT_TOKEN_KEYS + ("anomaly_token_position",)
# What a category records about how it was made (kept in its metadata and in category.json).
METADATA_KEYS = ("seed", "reference_files", "training", "evaluation", "decision_threshold", "pixel_threshold",
                 "threshold_estimate", "tiling")

# The most reference images a category may hold: the Hub adapter's memory bank is at most
# MAX_SHOTS x patches x width float32 per memory layer, which bounds what loading an adapter reads.
MAX_SHOTS = 1024
# The most reference images a coreset memory may be built from: its bank holds at most
# MAX_SHOTS x patches rows per layer however many references there were.
MAX_REFERENCES = 1 << 16

# ------------------------------------------------------------------------------------------- prompt tokens
def context_token(head: str, prompt: int, index: int) -> str:
    """The added token of normal-context vector `index` of normal prompt `prompt` of `head`."""
    return f"<{_HEAD_TOKEN_PREFIX[head]}_n{prompt}_{index}>"


def anomaly_token(head: str, suffix: int, index: int) -> str:
    """The added token of vector `index` of learnable anomaly suffix `suffix` of `head`."""
    return f"<{_HEAD_TOKEN_PREFIX[head]}_a{suffix}_{index}>"


def prompt_token_names(head_sizes: Callable[[str], Sequence[int]]) -> list[str]:
    """Added vocabulary tokens, one per learnable vector, in a fixed order (image head first).

    head_sizes(head) -> (N normal prompts, E context vectors, L anomaly suffixes, E_A vectors each).
    """
    names = []
    for head in HEADS:
        n_prompts, n_ctx, n_anomaly, n_anomaly_ctx = head_sizes(head)
        names += [context_token(head, i, e) for i in range(n_prompts) for e in range(n_ctx)]
        names += [anomaly_token(head, j, e) for j in range(n_anomaly) for e in range(n_anomaly_ctx)]
    return names


# ------------------------------------------------------------------------------------------- base identity
def base_model_architecture(clip_config) -> dict:
    """The sizes of a wrapped CLIP (a `CLIPConfig`) that an adapter's tensors depend on."""
    vision, text = clip_config.vision_config, clip_config.text_config
    return {"vision_hidden_size": vision.hidden_size, "vision_layers": vision.num_hidden_layers,
            "image_size": vision.image_size, "patch_size": vision.patch_size,
            "text_hidden_size": text.hidden_size, "text_layers": text.num_hidden_layers,
            "vocab_size": text.vocab_size, "projection_dim": clip_config.projection_dim}


def base_model_fingerprint(clip: nn.Module, prompt_token_ids: Sequence[int]) -> str:
    """A short hash of the frozen CLIP weights that matter for an adapter (projections, token rows)."""
    digest = hashlib.sha256()
    for tensor in (clip.visual_projection.weight, clip.text_projection.weight,
                   clip.text_model.embeddings.token_embedding.weight[:256], clip.logit_scale):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(list(prompt_token_ids)).encode())
    return digest.hexdigest()[:16]


def describe_base(identity: Mapping) -> str:
    """One line naming a base identity (category.json "base_model") for error messages and cards."""
    arch = identity.get("architecture") or {}
    sizes = (f"vision {arch.get('vision_layers')}x{arch.get('vision_hidden_size')}, text "
             f"{arch.get('text_layers')}x{arch.get('text_hidden_size')}, image {arch.get('image_size')}/patch "
             f"{arch.get('patch_size')}, projection {arch.get('projection_dim')}") if arch else "sizes not recorded"
    return (f"{identity.get('name_or_path')!r} (revision {identity.get('revision')}, {sizes}, "
            f"fingerprint {identity.get('fingerprint')})")


# ------------------------------------------------------------------------------------------- state
class CategoryState(nn.Module):
    """Everything one category adds to the base model (saved as one adapter folder).

    Tensors are buffers: `memory_{i}` (k, P, W) unit patch features of memory layer i (exact), or (M, W) for a
    coreset memory (`coreset`: its category.json record, with the coverage radius), and `prototype_{head}` (2, D)
    cached [normal, anomaly] text prototypes. Its prompt vectors are the category's PEFT adapter in the model's
    prompt-token table.
    """

    def __init__(self, name: str, class_name: str, phrases: Sequence[str], learned_prompts: bool = False,
                 memory_bank: Optional[Sequence[torch.Tensor]] = None,
                 prototypes: Optional[Mapping[str, torch.Tensor]] = None,
                 metadata: Optional[Mapping[str, Any]] = None, coreset: Optional[Mapping[str, Any]] = None,
                 shots: Optional[int] = None):
        super().__init__()
        self.name = validate_category_name(name)
        self.class_name = class_name
        self.phrases = list(phrases)
        self.learned_prompts = bool(learned_prompts)  # False: hand-written zero-shot prompts until trained
        self.metadata = dict(metadata or {})
        self._memory_layers = 0
        self.set_memory(memory_bank, coreset, shots)
        for head in HEADS:
            self.register_buffer(f"prototype_{head}", None)
        self.prototypes = prototypes or {}

    @property
    def memory_bank(self) -> Optional[list[torch.Tensor]]:
        """Per memory layer (k, P, W) unit vectors, or None (no references: text-only scoring)."""
        if not self._memory_layers:
            return None
        return [getattr(self, f"memory_{i}") for i in range(self._memory_layers)]

    @memory_bank.setter
    def memory_bank(self, layers: Optional[Sequence[torch.Tensor]]) -> None:
        self.set_memory(layers)

    def set_memory(self, layers: Optional[Sequence[torch.Tensor]], coreset: Optional[Mapping[str, Any]] = None,
                   shots: Optional[int] = None, sources: Optional[Sequence[torch.Tensor]] = None) -> None:
        """The exact bank (per layer (k, P, W)), or with `coreset` (its record) a coreset bank (per layer (M, W))
        built from `shots` references; `sources`: per layer (M,) the reference each kept row comes from (known
        where the coreset is built; the leave-one-out thresholds need it)."""
        layers = list(layers) if layers is not None else []
        if coreset is None and layers and (layers[0].ndim != 3 or layers[0].shape[0] > MAX_SHOTS):
            raise ArgumentError(f"memory layers of shape {tuple(layers[0].shape)}; an exact bank is (k, patches, width) "
                             f"with k at most {MAX_SHOTS} reference images (larger sets are kept as a coreset)")
        if coreset is not None and (not layers or any(layer.ndim != 2 for layer in layers) or
                                    isinstance(shots, bool) or not isinstance(shots, int) or
                                    not 1 <= shots <= MAX_REFERENCES):
            raise ArgumentError(f"a coreset memory needs (rows, width) layers and the number of references it was built "
                             f"from (1 to {MAX_REFERENCES}); got layers {[tuple(x.shape) for x in layers]}, shots "
                             f"{shots!r}")
        for i in range(self._memory_layers):
            delattr(self, f"memory_{i}")
        for i, layer in enumerate(layers):
            self.register_buffer(f"memory_{i}", layer.detach())
        self._memory_layers = len(layers)
        self.coreset = None if coreset is None else dict(coreset)
        self._coreset_shots = int(shots) if coreset is not None else 0
        self.coreset_sources = None if sources is None else [source.detach().cpu() for source in sources]

    @property
    def prototypes(self) -> dict[str, torch.Tensor]:
        """{head: (2, D) [normal, anomaly]} once computed, else {}."""
        cached = {head: getattr(self, f"prototype_{head}") for head in HEADS}
        return {head: p for head, p in cached.items() if p is not None}

    @prototypes.setter
    def prototypes(self, prototypes: Mapping[str, torch.Tensor]) -> None:
        unknown = set(prototypes) - set(HEADS)
        if unknown:
            raise ArgumentError(f"prototypes for unknown heads {sorted(unknown)}; expected {HEADS}")
        for head in HEADS:
            value = prototypes.get(head)
            setattr(self, f"prototype_{head}", None if value is None else value.detach())

    @property
    def shots(self) -> int:
        """The number of reference images the memory holds (a coreset: was built from)."""
        if self.coreset is not None:
            return self._coreset_shots
        bank = self.memory_bank
        return 0 if bank is None else int(bank[0].shape[0])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, class_name={self.class_name!r}, shots={self.shots}"
