"""The categories of an AnomCLIPModel: registering one (memory bank + prompt adapter), choosing the active one,
leave-one-out thresholds, and its adapter folder (record, save, load, push). A mixin of `AnomCLIPModel`: the
methods use the model's config, towers, prompt table and category states.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from transformers.utils import logging

from ..io.progress import Phase
from ..memory.policy import default_rule_text, memory_rows
from .adapter_schema import CORESET_FORMAT_VERSION
from .category import (
    HEADS,
    MAX_SHOTS,
    METADATA_KEYS,
    PROMPT_LAYOUT_KEYS,
    CategoryState,
    base_model_architecture,
    base_model_fingerprint,
    validate_category_name,
)
from .category_io import (
    ADAPTER_WEIGHTS,
    AdapterContents,
    AdapterExpectations,
    check_adapter,
    read_adapter,
    resolve_category_folder,
    write_adapter,
)
from .memory_bank import (
    MemoryBank,
    build_memory,
    coreset_leave_one_out,
    encode_references,
)
from .prompt_learner import ADAPTER_WEIGHT_KEYS
from .prompts import class_name_for, manual_phrases
from .thresholds import (
    DEFAULT_MARGIN,
    ThresholdEstimate,
    record_thresholds,
    threshold_estimate,
)
from .vv_attention import VisionFeatures

logger = logging.get_logger(__name__)
# Format 1 (what 0.1 wrote and still reads) for exact banks; a coreset needs format 2.
EXACT_FORMAT_VERSION = 1


class CategoryRegistryMixin:
    """Categories of the model: `category_states` (an nn.ModuleDict of CategoryState) and `_active`."""

    # ----------------------------------------------------------------------------------------- categories
    @property
    def categories(self) -> list[str]:
        return list(self.category_states)

    @property
    def active_category(self) -> Optional[str]:
        return self._active

    def get_category(self, name: Optional[str] = None) -> CategoryState:
        name = name or self._active
        if name is None:
            raise ValueError("no category is loaded: call add_category(...) or load_category(...) first")
        if name not in self.category_states:
            raise ValueError(f"unknown category {name!r}; loaded categories: {self.categories}")
        return self.category_states[name]

    def set_category(self, name: str) -> None:
        self.get_category(name)
        self._active = name

    def initial_prompt_vectors(self, seed: int) -> torch.Tensor:
        """N(0, std^2) vectors for every prompt token, reproducible from `seed`."""
        generator = torch.Generator().manual_seed(int(seed))
        shape = (len(self.config.prompt_token_names), self.config.clip_config.text_config.hidden_size)
        return torch.randn(shape, generator=generator) * self.config.ctx_init_std

    def prompt_parameters(self, category: Optional[str] = None) -> list[torch.nn.Parameter]:
        """The only trainable tensors of a category: its prompt vectors."""
        return [self.prompt_tokens.vectors(self.get_category(category).name)]

    def build_memory_bank(self, reference_images) -> list[torch.Tensor]:
        """Per memory layer (k, P, W) unit patch features of the reference images (a coreset's (M, W) when the
        default rule applies, see `build_memory`): PIL images, paths, pixel_values, or their `encode_images`
        output (so a caller that needs the features too encodes once)."""
        return self.build_memory(reference_images).layers

    def build_memory(self, reference_images, memory_size: Optional[int] = None,
                     coreset_ratio: Optional[float] = None, seed: int = 0, progress: bool = False) -> MemoryBank:
        """The visual memory of reference images (PIL images, paths, pixel values, `encode_images` output, or a
        built `MemoryBank`): exact, or a greedy coreset of `memory_size` rows (or `coreset_ratio` of them) per
        layer; by default exact up to `memory.policy.DEFAULT_MAX_EXACT_ROWS` rows, a coreset above (logged).
        Images are encoded `model.memory_bank.REFERENCE_BATCH` at a time; for a coreset, their memory features
        wait on disk (bounded memory for thousands of references)."""
        if isinstance(reference_images, MemoryBank):
            return reference_images
        if isinstance(reference_images, Mapping):  # the processor's output: its tensors, not its keys
            count = len(reference_images["pixel_values"]) if "pixel_values" in reference_images else 0
        else:
            if not isinstance(reference_images, (torch.Tensor, VisionFeatures)):
                reference_images = list(reference_images)
            count = (reference_images.global_embeds.shape[0] if isinstance(reference_images, VisionFeatures)
                     else len(reference_images))
        if count == 0:
            raise ValueError("reference_images is empty: pass at least one normal image (or None for text-only "
                             "zero-shot scoring)")
        size = self.memory_plan(int(count), memory_size, coreset_ratio, log=True)
        if not isinstance(reference_images, VisionFeatures):
            reference_images = encode_references(self, reference_images, spill=size is not None, progress=progress)
        return build_memory(reference_images, size, seed, progress)

    def memory_plan(self, references: int, memory_size: Optional[int] = None,
                    coreset_ratio: Optional[float] = None, log: bool = False) -> Optional[int]:
        """Rows a memory of `references` images keeps per layer (None: the exact bank), checked before any
        image is encoded: `memory.policy.memory_rows`, and an exact bank of at most MAX_SHOTS images."""
        rows = int(references) * self.num_patches
        size = memory_rows(rows, memory_size, coreset_ratio)
        if size is None and references > MAX_SHOTS:
            raise ValueError(f"{references} reference images in an exact memory bank; it holds at most {MAX_SHOTS}: "
                             "keep a coreset (memory_size, or coreset_ratio below 1)")
        if log and size is not None and memory_size is None and coreset_ratio is None:
            logger.warning(default_rule_text(rows, size))
        return size

    @property
    def num_patches(self) -> int:
        return self.memory_layout().num_patches  # CLIP's patch grid, or the DINOv2 memory's

    def add_category(self, name: str, reference_images=None, class_name: Optional[str] = None,
                     phrases: Optional[Sequence[str]] = None, category_phrases: Optional[bool] = None,
                     learned_prompts: bool = False, seed: int = 0, activate: bool = True,
                     memory_size: Optional[int] = None, coreset_ratio: Optional[float] = None,
                     progress: bool = False) -> CategoryState:
        """Register a category: its memory bank (from normal reference images, or None for text-only),
        its manual phrases and a fresh prompt adapter (initialised from `seed`). Replaces a category of
        the same name. `learned_prompts=False` scores with hand-written prompts until trained.
        memory_size / coreset_ratio: a greedy coreset of that many patch rows (that fraction) per memory layer,
        selected with `seed` (see `build_memory`; default: exact up to 16384 rows, a coreset above)."""
        validate_category_name(name)  # it becomes a PEFT adapter name, a folder name and part of repo ids
        use_category_phrases = self.config.category_phrases if category_phrases is None else category_phrases
        memory = None if reference_images is None else self.build_memory(reference_images, memory_size,
                                                                          coreset_ratio, seed, progress)
        state = CategoryState(
            name=name,
            class_name=class_name or class_name_for(name),
            phrases=manual_phrases(name, use_category_phrases, phrases),
            learned_prompts=learned_prompts,
            memory_bank=None if memory is None else memory.layers,
            metadata={"seed": int(seed)},
            coreset=None if memory is None else memory.coreset,
            shots=None if memory is None else memory.references,
        )
        if memory is not None and memory.coreset is not None:
            state.coreset_sources = list(memory.sources)
        self.prompt_tokens.add_adapter(name, self.initial_prompt_vectors(seed).to(self.device))
        return self._register(state, activate)

    def _register(self, state: CategoryState, activate: bool) -> CategoryState:
        """Make a category whose prompt adapter is already in `prompt_tokens` available (and active)."""
        self.category_states[state.name] = state.to(self.device)
        if activate or self._active is None:
            self._active = state.name
        return state

    def remove_category(self, name: str) -> None:
        self.get_category(name)
        del self.category_states[name]
        self.prompt_tokens.delete_adapter(name)
        if self._active == name:
            self._active = next(iter(self.category_states), None)

    # ----------------------------------------------------------------------------------------- thresholds
    def leave_one_out_scores(self, references: VisionFeatures, category: Optional[str] = None,
                             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores (k,), map maxima (k,)) of each reference scored against the memory of the others.

        `references` are the references' `encode_images` output, in the order of the category's memory bank
        (the features the memory bank was built from, so the vision tower does not run again).
        """
        state = self.get_category(category)
        bank = state.memory_bank
        if bank is None:
            raise ValueError(f"category {state.name!r} has no reference images; a threshold needs k >= 2 references")
        shots = state.shots
        if shots < 2:
            raise ValueError(f"category {state.name!r} has {shots} reference image; leave-one-out needs at least 2 "
                             "(pass a threshold instead)")
        if references.global_embeds.shape[0] != shots:
            raise ValueError(f"{references.global_embeds.shape[0]} reference images given, but the memory bank "
                             f"holds {shots}")
        if state.coreset is not None:
            if state.coreset_sources is None:
                raise ValueError(f"category {state.name!r} has a coreset memory loaded from an adapter: the thresholds "
                                 "of a coreset are estimated where it is built (add_category, fit), which knows "
                                 "the reference each kept row comes from")
            return coreset_leave_one_out(self, state.name, bank, state.coreset_sources, references, progress)
        image_scores, pixel_maxima = [], []
        with torch.inference_mode(), Phase("thresholds", shots, "img", enabled=progress) as bar:
            for index in range(shots):
                keep = torch.arange(shots, device=bank[0].device) != index
                held_out = VisionFeatures(references.global_embeds[index: index + 1],
                                          references.patch_embeds[index: index + 1],
                                          [layer[index: index + 1] for layer in references.memory_features])
                # at the scoring size, so the pixel threshold is defined like the image one
                out = self.score_features(held_out, state.name, output_size=self.config.scoring_size,
                                          memory_bank=[layer[keep] for layer in bank])
                image_scores.append(out.image_scores[0].float().cpu())
                pixel_maxima.append(out.anomaly_maps[0].float().max().cpu())
                bar.update(1)
        return torch.stack(image_scores), torch.stack(pixel_maxima)

    def estimate_thresholds(self, reference_images, category: Optional[str] = None,
                            margin: Optional[float] = None, progress: bool = False) -> ThresholdEstimate:
        """Leave-one-out decision thresholds of a category from its k >= 2 reference images (the same images,
        in the same order, as its memory bank: PIL images, paths, pixel values or their `encode_images`
        output); stored in its metadata and category.json. See `thresholds`."""
        if not isinstance(reference_images, VisionFeatures):  # images, paths or pixels: encoded batch by batch
            reference_images = encode_references(self, reference_images)
        estimate = threshold_estimate(*self.leave_one_out_scores(reference_images, category, progress),
                                      DEFAULT_MARGIN if margin is None else margin)
        record_thresholds(self.get_category(category).metadata, estimate)
        return estimate

    # ----------------------------------------------------------------------------------------- adapters
    def base_identity(self) -> dict:
        """category.json "base_model": which base an adapter was made for (checked when it is loaded)."""
        config = self.config
        identity = {"name_or_path": config.base_model_name_or_path, "revision": config.base_model_revision,
                    "architecture": base_model_architecture(config.clip_config),
                    "fingerprint": base_model_fingerprint(self.clip, config.prompt_token_ids)}
        if config.random_weights:  # its adapters' model cards then say PIPELINE CHECK
            identity["random_weights"] = True
        return identity

    def adapter_expectations(self) -> AdapterExpectations:
        """What an adapter must match to load onto this base."""
        config, clip = self.config, self.config.clip_config
        adapter_config = self.prompt_tokens.adapter_config()
        memory = self.memory_layout()
        return AdapterExpectations(
            prompt_layout={key: getattr(config, key) for key in PROMPT_LAYOUT_KEYS},
            base_identity=self.base_identity(), memory_layers=memory.layers,
            memory_tap=memory.tap, vision_width=memory.width,
            projection_dim=clip.projection_dim, text_width=clip.text_config.hidden_size,
            num_patches=memory.num_patches, memory_backbone=self.memory_backbone_identity(),
            adapter_config={"peft_type": adapter_config.peft_type.value,
                            "token_indices": list(adapter_config.token_indices)},
            weight_keys=ADAPTER_WEIGHT_KEYS)

    def category_record(self, name: Optional[str] = None) -> dict:
        """The category.json content of category `name` (default: the active one)."""
        state, config = self.get_category(name), self.config
        key = name or self._active  # its key here; state.name is what the record says (validated on write)
        memory = self._memory_record()
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
                "prompts": {head: vars(self.head_prompts(key, head)) for head in HEADS},
            },
            "base_model": self.base_identity(),
            "memory": memory,
            "shots": state.shots,
            **{key: state.metadata.get(key) for key in METADATA_KEYS},
        }

    def _memory_record(self) -> dict:
        """category.json "memory": the bank's layers and tap, and with a DINOv2 memory its identity."""
        layout = self.memory_layout()
        record = {"layers": list(layout.layers), "tap": layout.tap}
        if self.has_dino_memory:
            record["backbone"] = self.memory_backbone_identity()
        return record

    def save_category(self, save_directory: str, name: Optional[str] = None) -> str:
        """Write category `name` (default: the active one) as an adapter folder, atomically; see `category_io`."""
        key = name or self._active
        record = self.category_record(key)
        bank = self.get_category(key).memory_bank
        return write_adapter(
            save_directory, record, self.prompt_tokens.adapter_config(), self.prompt_tokens.adapter_state_dict(key),
            None if bank is None else dict(zip(self.memory_layout().layers, bank)), self.text_prototypes(key))

    def load_category(self, path_or_repo_id: str, name: Optional[str] = None, activate: bool = True,
                      revision: Optional[str] = None, **hub_kwargs) -> CategoryState:
        """Load a category adapter from a folder or a Hub repo id (at `revision`: branch, tag or commit; also
        cache_dir, token, local_files_only, force_download); it becomes the active category (unless
        `activate=False`). Everything is read and checked before the model changes, and a load that fails
        changes nothing (a loaded category of the same name stays as it was)."""
        if name is not None:
            validate_category_name(name)
        expected = self.adapter_expectations()
        contents = read_adapter(resolve_category_folder(path_or_repo_id, revision=revision, **hub_kwargs), expected)
        check_adapter(contents, expected)
        return self._register_adapter(contents, name or contents.record["category"], activate)

    def _register_adapter(self, contents: AdapterContents, name: str, activate: bool) -> CategoryState:
        record = contents.record
        state = CategoryState(
            name=name, class_name=record["class_name"], phrases=record["phrases"],
            learned_prompts=bool(record["learned_prompts"]),
            memory_bank=contents.memory_layers(self.memory_layout().layers), prototypes=contents.prototypes,
            metadata={key: record.get(key) for key in METADATA_KEYS},
            coreset=(record.get("memory") or {}).get("coreset"), shots=record["shots"]).to(self.device)
        if not state.prototypes:  # none stored: computed from the adapter's vectors now, refused if degenerate
            vectors = contents.weights[ADAPTER_WEIGHT_KEYS[0]].to(self.device)
            state.prototypes = self.checked_prototypes(
                state, vectors, f"{contents.source}: {ADAPTER_WEIGHTS} (no stored prototypes): the text prototypes "
                f"computed from its prompt vectors (largest |value| {float(vectors.abs().max()):.3g}), head")
        # The one step that changes the model and can fail; it restores the table if it does.
        self.prompt_tokens.load_adapter_state_dict(name, {k: v.to(self.device) for k, v in contents.weights.items()})
        return self._register(state, activate)

    def push_category_to_hub(self, repo_id: str, name: Optional[str] = None, *, private: Optional[bool] = None,
                             token=None, revision: Optional[str] = None, commit_message: Optional[str] = None):
        """Push category `name` (default: the active one) to its own Hub repo, with its model card; returns the
        commit info (`.oid` pins the revision). `revision` is the branch to push to (created if needed)."""
        from .publishing import (
            push_category_to_hub,  # the Hub client loads only when pushing
        )

        return push_category_to_hub(self, repo_id, name, private=private, token=token, revision=revision,
                                    commit_message=commit_message)
