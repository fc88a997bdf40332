"""AnomCLIPModel: a frozen transformers CLIPModel + V-V attention + learned prompts + visual memory."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn
from transformers import (
    AutoModel,
    CLIPModel,
    CLIPTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput, logging

from ..errors import ArgumentError, CategoryError, CheckpointError
from ..io.pixel_arrays import pixel_range_problem
from . import category_io, memory_backbone, prompt_text, thresholds
from .categories import CategoryBank
from .category import CategoryState, validate_category_name
from .configuration_anomclip import AnomCLIPConfig
from .devices import resolve_device
from .dtypes import resolve_compute_dtype
from .losses import TextFeatures
from .memory_backbone import MemoryLayout
from .memory_bank import MemoryBank, memory_from_references, memory_plan
from .processing_anomclip import checkpoint_preprocessing
from .prompt_learner import PromptTokenTable
from .prompts import HeadPrompts, class_name_for, manual_phrases
from .sanity import (
    check_finite_features,
    check_finite_scores,
    check_temperature,
)
from .scoring import (
    fuse_patch_scores,
    harmonic_fusion,
    memory_patch_scores,
    scaled_sigma,
    smooth_upsample,
    text_anomaly_probability,
    upsampled_peak,
)
from .thresholds import ThresholdEstimate
from .tokenization import add_prompt_tokens
from .vv_attention import VisionFeatures, dual_stream_vision_forward

logger = logging.get_logger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
SCORING_MODES = ("full", "memory", "text")
CLIP_MODEL_TYPE = "clip"
PREPROCESSING_KEYS = ("image_mean", "image_std", "image_resample")  # what checkpoint_preprocessing reads


@dataclass
class AnomCLIPOutput(ModelOutput):
    """Output of [`AnomCLIPModel`]: scores in [0, 1], higher = more anomalous.

    Args:
        image_scores (`torch.FloatTensor` of shape `(batch_size,)`):
            The image anomaly score. Mode "full": h(peak of the unblurred memory map upsampled to the config's
            `scoring_size`, text image score) with h(a, b) = ab / (a + b); "memory": that peak; "text": the
            text image score. Independent of `output_size`.
        anomaly_maps (`torch.FloatTensor` of shape `(batch_size, height, width)`):
            The pixel anomaly map at `output_size`: per patch h(text patch score, memory patch score) (or
            one of them alone in the "text"/"memory" modes), bilinearly upsampled, then Gaussian-blurred.
        text_image_scores (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
            softmax(tau [g.n, g.a])[1] of the global image embedding g against the image-head prototypes;
            `None` in the "memory" mode.
        memory_patch_scores (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            The visual-memory score per patch: the mean over the memory layers of min over the memory bank of
            (1 - cos) / 2; `None` in the "text" mode.
    """

    image_scores: Optional[torch.Tensor] = None
    anomaly_maps: Optional[torch.Tensor] = None
    text_image_scores: Optional[torch.Tensor] = None
    memory_patch_scores: Optional[torch.Tensor] = None


@dataclass
class PatchTerms:
    """`AnomCLIPModel.patch_terms`: per patch (B, P) the map's scores (fused, memory or text: the mode's) and
    the memory's; per image (B,) the DINOv2 memory's own image term (None for CLIP's memory: its image term is
    the peak of the upsampled map) and the text image term (None in the memory mode)."""

    mode: str
    patch_scores: torch.Tensor
    visual_patch: Optional[torch.Tensor]
    visual_image: Optional[torch.Tensor]
    text_image: Optional[torch.Tensor]


class AnomCLIPModel(PreTrainedModel):
    """PromptAD on a frozen CLIP: dual-stream vision, learnable prompts per category, visual memory.

    Composed of parts it owns: `clip` (the frozen CLIPModel), `category_bank` (a `CategoryBank`: every
    category's state and prompt vectors, and the active one), `memory_backbone` (None, or the DINOv2 tower of
    the DINO memory) and `tokenizer`. Its public methods are short: the work is done by the functions of
    `memory_bank`, `thresholds`, `category_io`, `prompt_text`, `memory_backbone` and `publishing`.
    """

    config_class = AnomCLIPConfig
    base_model_prefix = "anomclip"
    main_input_name = "pixel_values"
    # Saved bases hold CLIP and the settings only; prompt vectors and category tensors travel as adapters.
    _keys_to_ignore_on_load_missing = [r"category_bank\."]

    def __init__(self, config: AnomCLIPConfig, clip: Optional[CLIPModel] = None):
        """`clip`: an already loaded CLIPModel of `config.clip_config` to wrap as it is (from_clip), so its
        weights are neither copied nor re-initialised."""
        super().__init__(config)
        if clip is None:
            self.clip = CLIPModel(config.clip_config)
        width = config.clip_config.text_config.hidden_size
        self.category_bank = CategoryBank(len(config.prompt_token_names), width)
        self.tokenizer: Optional[CLIPTokenizer] = None
        self.memory_backbone = memory_backbone.build_memory_backbone(config)  # None, or a saved base's DINOv2
        self.post_init()
        if clip is not None:  # after post_init: weight initialisation must not touch the loaded weights
            self.clip = clip
        self.clip.requires_grad_(False)

    def _init_weights(self, module):
        # Weights come from the wrapped CLIP checkpoint; the prompt table's base rows are zeros.
        if isinstance(module, PromptTokenTable):
            torch.nn.init.zeros_(module.token_embedding.weight if hasattr(module.token_embedding, "weight")
                                 else module.token_embedding.base_layer.weight)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_clip(cls, clip: Union[str, os.PathLike, CLIPModel], tokenizer: Optional[CLIPTokenizer] = None,
                  revision: Optional[str] = None, torch_dtype=None, device=None, **config_kwargs
                  ) -> "AnomCLIPModel":
        """Wrap a CLIP checkpoint: an HF id, a local folder (single or sharded safetensors), or a `CLIPModel`
        object (wrapped as it is, then pass `tokenizer`, or it is loaded from the model's `name_or_path`).

        The towers compute in `torch_dtype`, else float32 on the CPU and the checkpoint's dtype on `device`
        (see `dtypes.resolve_compute_dtype`). Text features are pooled at the tokenizer's EOS id, and images
        are normalised with the checkpoint's preprocessor_config.json mean/std; both are recorded in the config.
        """
        device = resolve_device(device) if device is not None else None  # a wrong name fails before any loading
        if isinstance(clip, CLIPModel):
            clip_model = clip
            name = clip.config.name_or_path or None
        else:
            name = os.fspath(clip)
            check_clip_checkpoint(name, revision)
            # dtype="auto": the weights stay in their dtype on disk; cast once below if the policy says so.
            clip_model = CLIPModel.from_pretrained(name, revision=revision, dtype="auto")
        if tokenizer is None:
            if not name:
                raise ArgumentError("from_clip(CLIPModel) needs tokenizer= when the model has no name_or_path")
            tokenizer = CLIPTokenizer.from_pretrained(name, revision=revision)
        device = device if device is not None else clip_model.device
        compute_dtype = resolve_compute_dtype(clip_model.dtype, device, torch_dtype)
        if clip_model.dtype != compute_dtype:
            clip_model.to(compute_dtype)
        # All given: nothing to look up (a base built in code, as the demo's, has a name but no files anywhere).
        given = set(PREPROCESSING_KEYS) <= set(config_kwargs)
        preprocessing = checkpoint_preprocessing(name, revision=revision) if name and not given else {}
        memory_backbone = config_kwargs.pop("memory_backbone", None)  # loaded below, after the CLIP wrapper
        memory_revision = config_kwargs.pop("memory_backbone_revision", None)
        # A copy: initialising the wrapper resets its sub-configs' attention settings, the CLIP's own must stay.
        config = AnomCLIPConfig(clip_config=copy.deepcopy(clip_model.config), base_model_name_or_path=name,
                                base_model_revision=revision, text_eos_token_id=tokenizer.eos_token_id,
                                **{**preprocessing, **config_kwargs})
        config.prompt_token_ids = add_prompt_tokens(tokenizer, config.prompt_token_names)
        model = cls(config, clip=clip_model)
        model.tokenizer = tokenizer
        model.to(device)
        if memory_backbone is not None:
            model.attach_memory_backbone(memory_backbone, memory_revision, torch_dtype=torch_dtype)
        return model.eval()

    @classmethod
    def from_base(cls, base: Union[str, os.PathLike, CLIPModel], **config_overrides) -> "AnomCLIPModel":
        """`--base` of the command line: an AnomCLIP base (folder or repo id) or any CLIP one (wrapped)."""
        if isinstance(base, CLIPModel):
            return cls.from_clip(base, **config_overrides)
        if is_anomclip_base(PretrainedConfig.get_config_dict(os.fspath(base))[0]):
            return cls.from_pretrained(base, **config_overrides)
        return cls.from_clip(base, **config_overrides)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, torch_dtype=None, device=None, **kwargs):
        """A saved AnomCLIP base (single or sharded safetensors, any `revision=`). dtype policy as `from_clip`:
        `torch_dtype` (or `dtype`), else float32 on the CPU and the saved dtype on `device`."""
        torch_dtype = kwargs.pop("dtype", None) if torch_dtype is None else torch_dtype
        device = resolve_device(device) if device is not None else None  # a wrong name fails before the weights load
        memory_backbone = kwargs.pop("memory_backbone", None)  # another than the saved one: attached below
        memory_revision = kwargs.pop("memory_backbone_revision", None)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, dtype="auto", **kwargs)
        device = device if device is not None else model.device
        model.clip.to(resolve_compute_dtype(model.clip.dtype, device, torch_dtype))
        if model.memory_backbone is not None:
            model.memory_backbone.to(resolve_compute_dtype(model.memory_backbone.dtype, device, torch_dtype))
        model.category_bank.float()  # instantiated in the saved dtype; prompt vectors are float32
        model.to(device)
        hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
            # A bare config + weights folder: the model still encodes images; text needs model.tokenizer set.
            logger.warning(f"no tokenizer loaded from {path} (none of {list(_TOKENIZER_FILES)} is there); set "
                           "model.tokenizer (with the prompt tokens) before adding or training categories")
            model.tokenizer = None
        else:  # a broken or missing tokenizer of a full base is an error, not a silent None
            model.tokenizer = CLIPTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if model.tokenizer is not None:
            if model.config.text_eos_token_id is None:  # a base saved before the field: the tokenizer's EOS
                model.config.text_eos_token_id = model.tokenizer.eos_token_id
            model._check_tokenizer(model.tokenizer)
        if memory_backbone is not None and (os.fspath(memory_backbone), memory_revision) != (
                model.config.memory_backbone, model.config.memory_backbone_revision):
            model.attach_memory_backbone(memory_backbone, memory_revision, torch_dtype=torch_dtype)
        return model.eval()

    def save_pretrained(self, save_directory, **kwargs):
        """Save the base model (CLIP + settings) and its tokenizer; categories are saved as adapters."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("category_bank.")}
        kwargs.setdefault("state_dict", state)
        super().save_pretrained(save_directory, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    def _check_tokenizer(self, tokenizer: CLIPTokenizer) -> None:
        ids = tokenizer.convert_tokens_to_ids(self.config.prompt_token_names)
        if ids != self.config.prompt_token_ids:
            raise CheckpointError(f"tokenizer prompt-token ids {ids} differ from the model's {self.config.prompt_token_ids}")
        eos = self.config.text_eos_token_id
        if eos is not None and tokenizer.eos_token_id != eos:
            raise CheckpointError(f"tokenizer EOS id {tokenizer.eos_token_id} differs from the model's text_eos_token_id {eos}")

    @property
    def text_eos_token_id(self) -> int:
        """The id text features are pooled at: the config's (the tokenizer's EOS, recorded by from_clip), else
        the loaded tokenizer's, else the CLIP text config's (only right for checkpoints that keep it current)."""
        if self.config.text_eos_token_id is not None:
            return self.config.text_eos_token_id
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return self.tokenizer.eos_token_id
        return self.config.clip_config.text_config.eos_token_id

    # ----------------------------------------------------------------------------------------- features
    @property
    def temperature(self) -> float:
        """tau: the configured value, else the raw logit_scale parameter (reference code)."""
        if self.config.text_temperature is not None:
            return self.config.text_temperature  # finite and positive (the config checks it)
        if torch.compiler.is_exporting():
            return self.clip.logit_scale.detach()  # float() of a traced parameter cannot be exported; same value
        return check_temperature(float(self.clip.logit_scale.detach()))

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (size, size):
            raise ArgumentError(f"pixel_values has shape {tuple(pixel_values.shape)}; expected (batch, 3, {size}, {size})"
                             " (use AnomCLIPProcessor)")
        # A data-dependent check cannot be part of an exported graph (anomclip export); ONNX callers check inputs.
        if not torch.compiler.is_exporting() and not torch.isfinite(pixel_values).all():
            bad = int((~torch.isfinite(pixel_values)).sum())
            raise ArgumentError(f"pixel_values contains {bad} NaN or infinite values")
        if not torch.compiler.is_exporting() and pixel_values.numel():  # raw pixels would score as garbage
            config = self.config
            problem = pixel_range_problem(float(pixel_values.abs().max()), config.image_mean, config.image_std)
            if problem:
                raise ArgumentError(problem)

    def encode_images(self, pixel_values: torch.Tensor, memory_pixel_values: Optional[torch.Tensor] = None,
                      clip_tower: bool = True) -> VisionFeatures:
        """Global, V-V patch and memory-tap features of preprocessed images (all L2-normalised, float32).

        The pixels are cast to the tower's dtype at its input and the features back to float32 at its output,
        so no matmul mixes dtypes whatever the checkpoint's dtype. With a DINOv2 memory backbone the memory
        features are its patch tokens of `memory_pixel_values` (required then) instead of CLIP's taps.
        clip_tower=False (a DINOv2 memory only): the memory features alone, global and patch embeddings None;
        what the "memory" mode needs, without the cost of CLIP's vision tower."""
        self._check_pixel_values(pixel_values)
        if self.has_dino_memory:  # checked before either tower runs
            memory_backbone.check_memory_pixel_values(self.config, memory_pixel_values, pixel_values.shape[0])
        elif not clip_tower:
            raise ArgumentError("clip_tower=False needs a DINOv2 memory backbone: the CLIP memory taps are the "
                                "tower's")
        if not clip_tower:
            memory = self.encode_memory(memory_pixel_values)
            if not torch.compiler.is_exporting():
                check_finite_features([memory], pixel_values)
            return VisionFeatures(None, None, [memory])
        dtype = self.clip.visual_projection.weight.dtype
        features = dual_stream_vision_forward(self.clip.vision_model, self.clip.visual_projection,
                                              pixel_values.to(self.device, dtype), self.config.vv_layers,
                                              self.config.memory_layers, self.config.memory_tap)
        memory = ([self.encode_memory(memory_pixel_values)] if self.has_dino_memory
                  else [f.float() for f in features.memory_features])
        features = VisionFeatures(features.global_embeds.float(), features.patch_embeds.float(), memory)
        if not torch.compiler.is_exporting():
            check_finite_features([features.global_embeds, features.patch_embeds, *features.memory_features],
                                  pixel_values)
        return features

    # ----------------------------------------------------------------------------------------- scoring
    def forward(self, pixel_values: torch.Tensor, category: Optional[str] = None, output_size=None,
                mode: Optional[str] = None, return_dict: bool = True,
                memory_pixel_values: Optional[torch.Tensor] = None, **kwargs):
        """Score images for a category.

        mode: "full" (memory + text), "memory" (references only) or "text" (prompts only); default full
        when the category has references, else text. memory_pixel_values: the images preprocessed for the
        DINOv2 memory backbone, when the model has one (`AnomCLIPProcessor.from_model` makes both).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        mode = self._scoring_mode(self.get_category(category), mode)  # fail before the vision tower runs
        # The DINOv2 memory alone needs no CLIP tower (the bulk of the cost), so it does not run.
        clip_tower = not (mode == "memory" and self.has_dino_memory)
        features = self.encode_images(pixel_values, memory_pixel_values, clip_tower=clip_tower)
        output = self.score_features(features, category, output_size, mode)
        return output if return_dict else output.to_tuple()

    def _scoring_mode(self, state: CategoryState, mode: Optional[str], memory_bank=None) -> str:
        has_memory = state.memory_bank is not None or memory_bank is not None
        mode = mode or ("full" if has_memory else "text")
        if mode not in SCORING_MODES:
            raise ArgumentError(f"mode={mode!r}; expected one of {SCORING_MODES}")
        if mode in ("full", "memory") and not has_memory:
            raise CategoryError(f"mode={mode!r} needs reference images, but category {state.name!r} has none")
        return mode

    def patch_terms(self, features: VisionFeatures, category: Optional[str] = None, mode: Optional[str] = None,
                    memory_bank: Optional[Sequence[torch.Tensor]] = None) -> PatchTerms:
        """The per-patch and image-level terms of `encode_images` output, before any map is made: what an
        untiled forward upsamples and what tiled scoring (`model.tiling`) stitches across tiles.

        memory_bank: per memory layer (k, P, W) features to use instead of the category's own (e.g. the
        references but one, for leave-one-out thresholds).
        """
        state = self.get_category(category)
        mode = self._scoring_mode(state, mode, memory_bank)
        memory_bank = state.memory_bank if memory_bank is None else memory_bank
        text_image = text_patch = visual_patch = visual_image = None
        if mode in ("full", "text"):
            prototypes = self.text_prototypes(state.name)
            text_image = text_anomaly_probability(features.global_embeds.float(), prototypes["image"], self.temperature)
            text_patch = text_anomaly_probability(features.patch_embeds.float(), prototypes["pixel"], self.temperature)
        if mode in ("full", "memory"):
            # the buffers themselves (on the model's device): the search keeps its bf16 copy on them
            if self.has_dino_memory:  # AnomalyDINO's 1 - cos and top-1 % mean (memory_backbone.py)
                visual_patch, visual_image = self.dino_memory_terms(features.memory_features, list(memory_bank))
            else:
                visual_patch = memory_patch_scores([f.float() for f in features.memory_features], list(memory_bank),
                                                   search=self.config.memory_search)
        if not torch.compiler.is_exporting():  # NaN would fuse to 0: "normal" for every image, silently
            check_finite_scores(state.name, text_image=text_image, text_patch=text_patch, visual_patch=visual_patch)
        if mode == "full":
            patch_scores = fuse_patch_scores(text_patch, visual_patch)
        else:
            patch_scores = visual_patch if mode == "memory" else text_patch
        return PatchTerms(mode, patch_scores, visual_patch, visual_image, text_image)

    def score_features(self, features: VisionFeatures, category: Optional[str] = None, output_size=None,
                       mode: Optional[str] = None, memory_bank: Optional[Sequence[torch.Tensor]] = None
                       ) -> AnomCLIPOutput:
        """The scores of `encode_images` output (the forward without the vision tower); `memory_bank` as in
        `patch_terms`."""
        terms = self.patch_terms(features, category, mode, memory_bank)
        output_size = output_size or self.config.output_size or self.config.image_size
        visual_image = terms.visual_image
        if terms.visual_patch is not None and visual_image is None:
            visual_image = upsampled_peak(terms.visual_patch, self.config.scoring_size)
        if terms.mode == "full":
            image_scores = harmonic_fusion(visual_image, terms.text_image)
        else:
            image_scores = visual_image if terms.mode == "memory" else terms.text_image
        sigma = scaled_sigma(self.config.gaussian_sigma, self.config.sigma_reference_size, output_size)
        maps = smooth_upsample(terms.patch_scores, output_size, sigma)
        return AnomCLIPOutput(image_scores=image_scores, anomaly_maps=maps, text_image_scores=terms.text_image,
                              memory_patch_scores=terms.visual_patch)


    # ----------------------------------------------------------------------------------------- categories
    @property
    def categories(self) -> list[str]:
        """The names of the loaded categories."""
        return self.category_bank.names

    @property
    def active_category(self) -> Optional[str]:
        return self.category_bank.active

    def get_category(self, name: Optional[str] = None) -> CategoryState:
        return self.category_bank.get(name)

    def set_category(self, name: str) -> None:
        self.category_bank.activate(name)

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
            name=name, class_name=class_name or class_name_for(name),
            phrases=manual_phrases(name, use_category_phrases, phrases), learned_prompts=learned_prompts,
            metadata={"seed": int(seed)})
        if memory is not None:
            state.set_memory(memory.layers, memory.coreset, memory.references, memory.sources)
        return self.category_bank.add(state, self.initial_prompt_vectors(seed), activate)

    def remove_category(self, name: str) -> None:
        self.category_bank.remove(name)

    def initial_prompt_vectors(self, seed: int) -> torch.Tensor:
        """N(0, std^2) vectors for every prompt token, reproducible from `seed`."""
        generator = torch.Generator().manual_seed(int(seed))
        shape = (len(self.config.prompt_token_names), self.config.clip_config.text_config.hidden_size)
        return torch.randn(shape, generator=generator) * self.config.ctx_init_std

    def prompt_parameters(self, category: Optional[str] = None) -> list[torch.nn.Parameter]:
        """The only trainable tensors of a category: its prompt vectors."""
        return [self.category_bank.vectors(category)]

    # ----------------------------------------------------------------------------------------- memory
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
        return memory_from_references(self, reference_images, memory_size, coreset_ratio, seed, progress)

    def memory_plan(self, references: int, memory_size: Optional[int] = None,
                    coreset_ratio: Optional[float] = None, log: bool = False) -> Optional[int]:
        """Rows a memory of `references` images keeps per layer (None: the exact bank), checked before any
        image is encoded: `memory.policy.memory_rows`, and an exact bank of at most MAX_SHOTS images."""
        return memory_plan(self, references, memory_size, coreset_ratio, log)

    @property
    def num_patches(self) -> int:
        return self.memory_layout().num_patches  # CLIP's patch grid, or the DINOv2 memory's

    @property
    def has_dino_memory(self) -> bool:
        return self.memory_backbone is not None

    def attach_memory_backbone(self, backbone: Union[str, os.PathLike, nn.Module], revision: Optional[str] = None,
                               image_size: Optional[int] = None, torch_dtype=None) -> None:
        """Make a DINOv2 model (Hub id, folder or loaded module) the visual memory, with its processor's
        normalisation and `image_size` (default: the config's `memory_image_size`). Refused, with nothing
        changed, when it is not a DINOv2 model or the size is not a multiple of its patch; categories already
        loaded hold banks of the old memory, so there must be none."""
        memory_backbone.attach_memory_backbone(self, backbone, revision, image_size, torch_dtype)

    def memory_backbone_identity(self) -> Optional[dict]:
        """category.json "memory"."backbone": which DINOv2 memory an adapter's bank was built with (or None)."""
        return memory_backbone.memory_backbone_identity(self)

    def memory_layout(self) -> MemoryLayout:
        """The memory bank's layers, tap, width and patch count on this base (CLIP taps or the DINO tokens)."""
        return memory_backbone.memory_layout(self)

    def encode_memory(self, memory_pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, P, W) unit DINOv2 patch features of `memory_pixel_values` (float32)."""
        return memory_backbone.encode_memory(self, memory_pixel_values)

    def dino_memory_terms(self, memory_features: Sequence[torch.Tensor], memory_bank: Sequence[torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_dino per patch (B, P), memory image score (B,)) of the DINOv2 memory: see `memory_backbone`."""
        return memory_backbone.dino_memory_terms(memory_features, memory_bank)

    # ----------------------------------------------------------------------------------------- thresholds
    def leave_one_out_scores(self, references: VisionFeatures, category: Optional[str] = None,
                             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores (k,), map maxima (k,)) of each reference scored against the memory of the others.

        `references` are the references' `encode_images` output, in the order of the category's memory bank
        (the features the memory bank was built from, so the vision tower does not run again).
        """
        return thresholds.leave_one_out_scores(self, references, category, progress)

    def estimate_thresholds(self, reference_images, category: Optional[str] = None,
                            margin: Optional[float] = None, progress: bool = False) -> ThresholdEstimate:
        """Leave-one-out decision thresholds of a category from its k >= 2 reference images (the same images,
        in the same order, as its memory bank: PIL images, paths, pixel values or their `encode_images`
        output); stored in its metadata and category.json. See `thresholds`."""
        return thresholds.estimate_thresholds(self, reference_images, category, margin, progress)

    # ----------------------------------------------------------------------------------------- text
    def tokenize_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return prompt_text.tokenize_prompts(self, prompts)

    def encode_prompt_texts(self, category: str, prompts: Sequence[str]) -> torch.Tensor:
        """Unnormalised float32 text features (len(prompts), D) of prompts that may contain prompt tokens,
        pooled at the tokenizer's EOS (`text_eos_token_id`; the first one: CLIP tokenizers pad with EOS)."""
        return prompt_text.encode_texts(self, self.category_bank.vectors(category), prompts)

    def head_prompts(self, category: str, head: str) -> HeadPrompts:
        return prompt_text.head_prompts_of(self.config, self.get_category(category), head)

    def encode_prompts(self, category: str, head: str) -> TextFeatures:
        """Per-prompt text features of one head (with gradients to the prompt vectors when enabled)."""
        return prompt_text.encode_head(self, self.get_category(category), head, self.category_bank.vectors(category))

    def text_prototypes(self, category: Optional[str] = None) -> dict[str, torch.Tensor]:
        """{head: (2, D) [normal, anomaly]}; constants after training, so computed once and cached."""
        state = self.get_category(category)
        if not state.prototypes:
            state.prototypes = self.checked_prototypes(state, self.category_bank.vectors(category),
                                                       f"category {state.name!r}: the text prototypes computed from "
                                                       "its prompt vectors, head")
        return state.prototypes

    def checked_prototypes(self, state: CategoryState, vectors: torch.Tensor, where: str) -> dict:
        """{head: (2, D)} of `state`'s prompts with prompt `vectors`, refused (a ValueError naming `where`) when
        degenerate: NaN (vectors too large for the text tower), zero or equal rows (see `sanity`)."""
        return prompt_text.checked_prototypes(self, state, vectors, where)

    def clear_prototype_cache(self, category: Optional[str] = None) -> None:
        """Call after changing a category's prompt vectors (training does)."""
        self.get_category(category).prototypes = {}

    # ----------------------------------------------------------------------------------------- adapters
    def base_identity(self) -> dict:
        """category.json "base_model": which base an adapter was made for (checked when it is loaded)."""
        return category_io.base_identity(self)

    def adapter_expectations(self) -> category_io.AdapterExpectations:
        """What an adapter must match to load onto this base."""
        return category_io.adapter_expectations(self)

    def category_record(self, name: Optional[str] = None) -> dict:
        """The category.json content of category `name` (default: the active one)."""
        return category_io.category_record(self, name)

    def save_category(self, save_directory: str, name: Optional[str] = None) -> str:
        """Write category `name` (default: the active one) as an adapter folder, atomically; see `category_io`."""
        return category_io.save_category(self, save_directory, name)

    def load_category(self, path_or_repo_id: str, name: Optional[str] = None, activate: bool = True,
                      revision: Optional[str] = None, **hub_kwargs) -> CategoryState:
        """Load a category adapter from a folder or a Hub repo id (at `revision`: branch, tag or commit; also
        cache_dir, token, local_files_only, force_download); it becomes the active category (unless
        `activate=False`). Everything is read and checked before the model changes, and a load that fails
        changes nothing (a loaded category of the same name stays as it was)."""
        return category_io.load_category(self, path_or_repo_id, name, activate, revision, **hub_kwargs)

    def push_category_to_hub(self, repo_id: str, name: Optional[str] = None, *, private: Optional[bool] = None,
                             token=None, revision: Optional[str] = None, commit_message: Optional[str] = None):
        """Push category `name` (default: the active one) to its own Hub repo, with its model card; returns the
        commit info (`.oid` pins the revision). `revision` is the branch to push to (created if needed)."""
        from .publishing import (
            push_category_to_hub,  # the Hub client loads only when pushing
        )

        return push_category_to_hub(self, repo_id, name, private=private, token=token, revision=revision,
                                    commit_message=commit_message)


def check_clip_checkpoint(name_or_path: str, revision: Optional[str] = None) -> None:
    """Refuse a checkpoint whose towers CLIP cannot represent (SigLIP, any non-CLIP model type) by name."""
    config_dict, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
    model_type = config_dict.get("model_type")
    if model_type != CLIP_MODEL_TYPE:
        raise CheckpointError(f"{name_or_path}: config.json has model_type {model_type!r}; AnomCLIP wraps CLIP checkpoints "
                         f"(model_type {CLIP_MODEL_TYPE!r}: text and vision towers transformers' CLIPModel loads)")


def is_anomclip_base(config_dict: dict) -> bool:
    """Whether a checkpoint's config.json dict is an AnomCLIP base (else it is taken as a CLIP one)."""
    return config_dict.get("model_type") == AnomCLIPConfig.model_type


# AutoModel.from_pretrained knows an AnomCLIP folder once the model class exists (AutoConfig: see the config).
AutoModel.register(AnomCLIPConfig, AnomCLIPModel, exist_ok=True)
