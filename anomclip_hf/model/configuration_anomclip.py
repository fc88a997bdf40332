"""AnomCLIPConfig: a CLIP config plus the prompt, V-V, memory and scoring settings of PromptAD."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from transformers import AutoConfig, CLIPConfig, PretrainedConfig

from ..errors import ConfigurationError

# OpenAI CLIP's normalisation and bicubic resize: the defaults when a checkpoint has no preprocessor_config.json
from ..io.pixel_arrays import BICUBIC, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..memory.dino_settings import (
    DEFAULT_MEMORY_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_dino_config,
)
from .category import HEADS, prompt_token_names

ANOMALY_TOKEN_POSITIONS = ("suffix", "before_class")
MEMORY_TAPS = ("after_attention", "block_output")
MEMORY_SEARCHES = ("auto", "exact", "shortlist", "faiss")
# The reference code reads its memory taps in blocks 3 and 8 of a 12-block ViT; other depths scale.
_REFERENCE_MEMORY_FRACTIONS = (3 / 12, 8 / 12)


def _finite_number(name: str, value, positive: bool) -> float:
    """float(value) if finite and > 0 (`positive`) or >= 0, else ValueError naming the setting."""
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigurationError(f"{name}={value!r}; expected a finite number {'> 0' if positive else '>= 0'}")
    return number


class AnomCLIPConfig(PretrainedConfig):
    r"""Configuration of [`AnomCLIPModel`]: a CLIP config plus PromptAD's prompt, V-V, memory and scoring settings.

    The defaults reproduce PromptAD (Li et al., CVPR 2024) as its reference code runs it, except where the
    paper is followed instead (`anomaly_token_position`). Sizes in the paper's notation: N normal prompts of
    E context vectors each; L learnable anomaly suffixes of E_A vectors each; M manual phrases.

    Args:
        clip_config (`CLIPConfig` or `dict`, *optional*):
            The wrapped CLIP model's configuration. Defaults to `CLIPConfig()` (ViT-B/32 sizes).
        n_ctx (`int`, *optional*, defaults to 4):
            E: learnable normal context vectors per normal prompt ("[SOS] C_1..C_E <class> .").
        n_prompts_image (`int`, *optional*, defaults to 3):
            N of the image-level head: normal prompts, each with its own context vectors.
        n_prompts_pixel (`int`, *optional*, defaults to 1):
            N of the pixel-level head.
        n_anomaly_ctx (`int`, *optional*, defaults to 1):
            E_A: vectors per learnable anomaly suffix.
        n_anomaly_prompts (`int`, *optional*, defaults to 4):
            L: learnable anomaly suffixes per head; with the M manual phrases, semantic concatenation gives
            N*M + N*L anomaly prompts per head.
        ctx_init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the N(0, std^2) initialisation of every prompt vector.
        anomaly_token_position (`str`, *optional*, defaults to `"suffix"`):
            Where a learned anomaly suffix goes: `"suffix"` (the paper: after the class name) or
            `"before_class"` (the reference code: between the context and the class name).
        category_phrases (`bool`, *optional*, defaults to `True`):
            Append the per-category manual phrases (the reference's lists for MVTec AD and VisA, which name
            the test defect types) to the 8 generic ones.
        vv_layers (`list[int]`, *optional*):
            Vision blocks that run the V-V (value-value) attention path of CLIP Surgery. Defaults to every
            block (the reference code); stored resolved.
        memory_layers (`list[int]`, *optional*):
            Vision blocks whose original-stream features fill the visual memory. Defaults to the blocks 3/12
            and 8/12 of the way through the tower (blocks 3 and 8 of a 12-block ViT, where the reference code
            effectively reads them); stored resolved.
        memory_tap (`str`, *optional*, defaults to `"after_attention"`):
            Where a memory block is read: `"after_attention"` (the residual stream after the attention
            sub-layer, what the reference code effectively used) or `"block_output"`.
        memory_search (`str`, *optional*, defaults to `"auto"`):
            How the visual memory is searched (all exact): `"exact"` (float32 products), `"shortlist"` (bf16
            candidates re-checked in float32), `"faiss"` (faiss' exact inner-product index, the `[faiss]` extra)
            or `"auto"` (the shortlist for large banks where bf16 instructions exist and it measured faster than
            the exact search on this machine, else exact).
        text_temperature (`float`, *optional*):
            tau, the scale of the cosine logits in the text scores and losses. `None` uses the raw
            `logit_scale` parameter, as the reference code does (about 4.6, not exp(logit_scale) = 100). Not
            named `temperature`: transformers 4.x configs own that name (a generation setting, default 1.0).
        gaussian_sigma (`float`, *optional*, defaults to 4.0):
            Gaussian blur of the pixel map at `sigma_reference_size` pixels; scaled with the map size.
        sigma_reference_size (`int`, *optional*, defaults to 400):
            The map size `gaussian_sigma` is given at (the reference evaluates at 400x400).
        output_size (`int`, *optional*):
            Default anomaly-map size; `None` gives maps at the input resolution.
        scoring_size (`int`, *optional*, defaults to 400):
            The map size image scores are defined at (the peak of the memory map upsampled to this size),
            whatever `output_size` a caller asks for; decision thresholds use it too. 400 is the reference
            protocol's evaluation size.
        text_eos_token_id (`int`, *optional*):
            The EOS id text features are pooled at: the tokenizer's `eos_token_id`, recorded when the model is
            built from a checkpoint (OpenAI's CLIP configs keep a legacy `text_config.eos_token_id = 2`). `None`
            (older saved bases): the loaded tokenizer's EOS id.
        image_mean, image_std (`list[float]`, *optional*):
            Pixel normalisation, from the base's `preprocessor_config.json` when it has one (else OpenAI's).
        image_resample (`int`, *optional*, defaults to 3):
            PIL resampling filter of the resize to `image_size` (the processor config's `resample`; 3 = bicubic).
        prompt_token_ids (`list[int]`, *optional*):
            Vocabulary ids of the added prompt tokens, in `prompt_token_names` order; set when the model is
            built from a CLIP checkpoint.
        base_model_name_or_path (`str`, *optional*):
            The CLIP checkpoint (Hub id or folder) the model was built from; recorded in every adapter.
        base_model_revision (`str`, *optional*):
            Its revision (branch, tag or commit), when one was given.
        random_weights (`bool`, *optional*, defaults to `False`):
            The CLIP weights are random (a pipeline check, e.g. the offline demo's base): every output made
            with it is labelled PIPELINE CHECK (`anomclip_hf.io.labels`).

    Example:

    ```python
    >>> from transformers import CLIPConfig
    >>> from anomclip_hf import AnomCLIPConfig
    >>> config = AnomCLIPConfig(clip_config=CLIPConfig(), anomaly_token_position="before_class")
    >>> config.memory_layers  # resolved from the depth: blocks 3 and 8 of 12
    [3, 8]
    ```
    """

    model_type = "anomclip"
    sub_configs = {"clip_config": CLIPConfig}

    def __init__(
        self,
        clip_config: Optional[dict | CLIPConfig] = None,
        n_ctx: int = 4,
        n_prompts_image: int = 3,
        n_prompts_pixel: int = 1,
        n_anomaly_ctx: int = 1,
        n_anomaly_prompts: int = 4,
        ctx_init_std: float = 0.02,
        anomaly_token_position: str = "suffix",
        category_phrases: bool = True,
        vv_layers: Optional[Sequence[int]] = None,
        memory_layers: Optional[Sequence[int]] = None,
        memory_tap: str = "after_attention",
        memory_search: str = "auto",
        text_temperature: Optional[float] = None,
        gaussian_sigma: float = 4.0,
        sigma_reference_size: int = 400,
        output_size: Optional[int] = None,
        scoring_size: int = 400,
        text_eos_token_id: Optional[int] = None,
        image_mean: Optional[Sequence[float]] = None,
        image_std: Optional[Sequence[float]] = None,
        image_resample: int = BICUBIC,
        prompt_token_ids: Optional[Sequence[int]] = None,
        base_model_name_or_path: Optional[str] = None,
        base_model_revision: Optional[str] = None,
        random_weights: bool = False,
        memory_backbone: Optional[str] = None,
        memory_backbone_revision: Optional[str] = None,
        memory_backbone_config: Optional[dict] = None,
        memory_image_size: int = DEFAULT_MEMORY_IMAGE_SIZE,
        memory_image_mean: Optional[Sequence[float]] = None,
        memory_image_std: Optional[Sequence[float]] = None,
        memory_image_resample: int = BICUBIC,
        **kwargs,
    ):
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        self.clip_config = clip_config
        if anomaly_token_position not in ANOMALY_TOKEN_POSITIONS:
            raise ConfigurationError(
                f"anomaly_token_position={anomaly_token_position!r}; expected one of {ANOMALY_TOKEN_POSITIONS}"
            )
        if memory_tap not in MEMORY_TAPS:
            raise ConfigurationError(f"memory_tap={memory_tap!r}; expected one of {MEMORY_TAPS}")
        for name, value in (("n_ctx", n_ctx), ("n_prompts_image", n_prompts_image), ("n_prompts_pixel", n_prompts_pixel),
                            ("n_anomaly_ctx", n_anomaly_ctx), ("n_anomaly_prompts", n_anomaly_prompts)):
            if int(value) < 1:
                raise ConfigurationError(f"{name}={value}; expected a positive integer")
        self.n_ctx = int(n_ctx)
        self.n_prompts_image = int(n_prompts_image)
        self.n_prompts_pixel = int(n_prompts_pixel)
        self.n_anomaly_ctx = int(n_anomaly_ctx)
        self.n_anomaly_prompts = int(n_anomaly_prompts)
        self.ctx_init_std = _finite_number("ctx_init_std", ctx_init_std, positive=False)
        self.anomaly_token_position = anomaly_token_position
        self.category_phrases = bool(category_phrases)
        depth = clip_config.vision_config.num_hidden_layers
        # Stored resolved, so a saved config.json says which blocks the model uses.
        self.vv_layers = sorted(int(i) for i in vv_layers) if vv_layers is not None else list(range(depth))
        self.memory_layers = ([int(i) for i in memory_layers] if memory_layers is not None
                              else [int(fraction * depth) for fraction in _REFERENCE_MEMORY_FRACTIONS])
        for name, layers in (("vv_layers", self.vv_layers), ("memory_layers", self.memory_layers)):
            if not layers or any(i < 0 or i >= depth for i in layers):
                raise ConfigurationError(f"{name}={layers}; expected indices in [0, {depth - 1}]")
        self.memory_tap = memory_tap
        if memory_search not in MEMORY_SEARCHES:
            raise ConfigurationError(f"memory_search={memory_search!r}; expected one of {MEMORY_SEARCHES}")
        self.memory_search = memory_search
        # NaN or infinite settings would not fail: the scores would (a NaN temperature scores every image 0).
        self.text_temperature = None if text_temperature is None else _finite_number("text_temperature",
                                                                                      text_temperature, positive=True)
        self.gaussian_sigma = _finite_number("gaussian_sigma", gaussian_sigma, positive=False)
        self.sigma_reference_size = int(sigma_reference_size)
        if self.sigma_reference_size < 1:
            raise ConfigurationError(f"sigma_reference_size={sigma_reference_size}; expected a positive integer")
        self.output_size = None if output_size is None else int(output_size)
        if self.output_size is not None and self.output_size < 1:
            raise ConfigurationError(f"output_size={output_size}; expected a positive integer or null (the image size)")
        if int(scoring_size) < 1:
            raise ConfigurationError(f"scoring_size={scoring_size}; expected a positive integer")
        self.scoring_size = int(scoring_size)
        self.text_eos_token_id = None if text_eos_token_id is None else int(text_eos_token_id)
        self.image_mean = [float(x) for x in (OPENAI_CLIP_MEAN if image_mean is None else image_mean)]
        self.image_std = [float(x) for x in (OPENAI_CLIP_STD if image_std is None else image_std)]
        for name, values in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            if len(values) != 3:
                raise ConfigurationError(f"{name}={values}; expected 3 values (R, G, B)")
        if not all(math.isfinite(x) for x in self.image_mean + self.image_std) or min(self.image_std) <= 0:
            raise ConfigurationError(f"image_mean={self.image_mean}, image_std={self.image_std}; expected finite values "
                             "and positive standard deviations")
        self.image_resample = int(image_resample)
        self.prompt_token_ids = [int(i) for i in prompt_token_ids] if prompt_token_ids is not None else None
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.random_weights = bool(random_weights)
        self._set_memory_backbone(memory_backbone, memory_backbone_revision, memory_backbone_config,
                                  memory_image_size, memory_image_mean, memory_image_std, memory_image_resample)
        super().__init__(**kwargs)

    def _set_memory_backbone(self, name, revision, backbone_config, image_size, mean, std, resample) -> None:
        """The DINOv2 memory settings (all None/defaults without one), checked as the CLIP ones are."""
        self.memory_backbone = None if name is None else str(name)
        self.memory_backbone_revision = revision
        if backbone_config is not None:
            backbone_config = backbone_config if isinstance(backbone_config, dict) else backbone_config.to_dict()
            check_dino_config(backbone_config, self.memory_backbone or "memory_backbone_config")
        self.memory_backbone_config = backbone_config
        self.memory_image_size = int(image_size)
        if self.memory_image_size < 1:
            raise ConfigurationError(f"memory_image_size={image_size}; expected a positive size in pixels")
        patch = (backbone_config or {}).get("patch_size")
        if patch and self.memory_image_size % int(patch):
            raise ConfigurationError(f"memory_image_size={image_size} is not a multiple of the memory backbone's patch size "
                             f"{patch}")
        self.memory_image_mean = [float(x) for x in (IMAGENET_MEAN if mean is None else mean)]
        self.memory_image_std = [float(x) for x in (IMAGENET_STD if std is None else std)]
        for key, values in (("memory_image_mean", self.memory_image_mean), ("memory_image_std", self.memory_image_std)):
            if len(values) != 3 or (key.endswith("std") and min(values) <= 0):
                raise ConfigurationError(f"{key}={values}; expected 3 values (R, G, B){', positive' if key.endswith('std') else ''}")
        self.memory_image_resample = int(resample)

    @property
    def image_size(self) -> int:
        return self.clip_config.vision_config.image_size

    def head_sizes(self, head: str) -> tuple[int, int, int, int]:
        """(N normal prompts, E context vectors, L anomaly suffixes, E_A vectors each) of a head."""
        prompts = dict(zip(HEADS, (self.n_prompts_image, self.n_prompts_pixel)))
        if head not in prompts:
            raise ConfigurationError(f"head={head!r}; expected one of {HEADS}")
        return prompts[head], self.n_ctx, self.n_anomaly_prompts, self.n_anomaly_ctx

    @property
    def prompt_token_names(self) -> list[str]:
        """Added vocabulary tokens, one per learnable vector, in a fixed order (image head first)."""
        return prompt_token_names(self.head_sizes)


# AutoConfig.from_pretrained knows an AnomCLIP folder once the config class exists.
AutoConfig.register(AnomCLIPConfig.model_type, AnomCLIPConfig, exist_ok=True)

__all__ = ["AnomCLIPConfig"]
