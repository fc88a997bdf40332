"""AnomCLIPConfig: a CLIP config plus the prompt, V-V, memory and scoring settings of PromptAD."""

from __future__ import annotations

from typing import Optional, Sequence

from transformers import CLIPConfig, PretrainedConfig

ANOMALY_TOKEN_POSITIONS = ("suffix", "before_class")
MEMORY_TAPS = ("after_attention", "block_output")
# The reference code reads its memory taps in blocks 3 and 8 of a 12-block ViT; other depths scale.
_REFERENCE_MEMORY_FRACTIONS = (3 / 12, 8 / 12)


class AnomCLIPConfig(PretrainedConfig):
    r"""Configuration of [`AnomCLIPModel`].

    Args:
        clip_config: the wrapped `CLIPConfig` (or its dict).
        n_ctx: learnable normal context vectors per normal prompt (E).
        n_prompts_image / n_prompts_pixel: normal prompts of the image-level / pixel-level head (N).
        n_anomaly_ctx: vectors per learnable anomaly suffix (E_A).
        n_anomaly_prompts: learnable anomaly suffixes per head (L).
        ctx_init_std: std of the N(0, std^2) initialisation of the prompt vectors.
        anomaly_token_position: "suffix" (paper: after the class name) or "before_class" (reference code).
        category_phrases: append the per-category manual phrases to the 8 generic ones.
        vv_layers: vision blocks running the V-V path (None = all).
        memory_layers: blocks whose stream feeds the visual memory (None = 3/12 and 8/12 of the depth).
        memory_tap: "after_attention" (what the reference code effectively used) or "block_output".
        text_temperature: text logit scale tau; None = the raw `logit_scale` parameter (reference code). Not
            named `temperature`: transformers 4.x configs own that name (a generation setting, default 1.0).
        gaussian_sigma: blur of the pixel map at `sigma_reference_size` pixels; scaled with the map size.
        output_size: default anomaly-map size (None = the input resolution).
        prompt_token_ids: vocabulary ids of the added prompt tokens, in `prompt_token_names` order.
        random_weights: the CLIP weights are random (a pipeline check, e.g. the offline demo's base): every
            output made with it is labelled PIPELINE CHECK (`anomclip_hf.labels`).
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
        text_temperature: Optional[float] = None,
        gaussian_sigma: float = 4.0,
        sigma_reference_size: int = 400,
        output_size: Optional[int] = None,
        prompt_token_ids: Optional[Sequence[int]] = None,
        base_model_name_or_path: Optional[str] = None,
        base_model_revision: Optional[str] = None,
        random_weights: bool = False,
        **kwargs,
    ):
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        self.clip_config = clip_config
        if anomaly_token_position not in ANOMALY_TOKEN_POSITIONS:
            raise ValueError(
                f"anomaly_token_position={anomaly_token_position!r}; expected one of {ANOMALY_TOKEN_POSITIONS}"
            )
        if memory_tap not in MEMORY_TAPS:
            raise ValueError(f"memory_tap={memory_tap!r}; expected one of {MEMORY_TAPS}")
        for name, value in (("n_ctx", n_ctx), ("n_prompts_image", n_prompts_image), ("n_prompts_pixel", n_prompts_pixel),
                            ("n_anomaly_ctx", n_anomaly_ctx), ("n_anomaly_prompts", n_anomaly_prompts)):
            if int(value) < 1:
                raise ValueError(f"{name}={value}; expected a positive integer")
        self.n_ctx = int(n_ctx)
        self.n_prompts_image = int(n_prompts_image)
        self.n_prompts_pixel = int(n_prompts_pixel)
        self.n_anomaly_ctx = int(n_anomaly_ctx)
        self.n_anomaly_prompts = int(n_anomaly_prompts)
        self.ctx_init_std = float(ctx_init_std)
        self.anomaly_token_position = anomaly_token_position
        self.category_phrases = bool(category_phrases)
        depth = clip_config.vision_config.num_hidden_layers
        self.vv_layers = sorted(int(i) for i in vv_layers) if vv_layers is not None else None
        self.memory_layers = [int(i) for i in memory_layers] if memory_layers is not None else None
        for name, layers in (("vv_layers", self.vv_layers), ("memory_layers", self.memory_layers)):
            if layers is not None and (not layers or any(i < 0 or i >= depth for i in layers)):
                raise ValueError(f"{name}={layers}; expected indices in [0, {depth - 1}]")
        self.memory_tap = memory_tap
        self.text_temperature = None if text_temperature is None else float(text_temperature)
        self.gaussian_sigma = float(gaussian_sigma)
        self.sigma_reference_size = int(sigma_reference_size)
        self.output_size = None if output_size is None else int(output_size)
        self.prompt_token_ids = [int(i) for i in prompt_token_ids] if prompt_token_ids is not None else None
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.random_weights = bool(random_weights)
        super().__init__(**kwargs)

    @property
    def resolved_vv_layers(self) -> list[int]:
        depth = self.clip_config.vision_config.num_hidden_layers
        return list(range(depth)) if self.vv_layers is None else list(self.vv_layers)

    @property
    def resolved_memory_layers(self) -> list[int]:
        """Memory taps; the default scales the reference's blocks 3 and 8 (of 12) with the depth."""
        if self.memory_layers is not None:
            return list(self.memory_layers)
        depth = self.clip_config.vision_config.num_hidden_layers
        return [int(fraction * depth) for fraction in _REFERENCE_MEMORY_FRACTIONS]

    @property
    def image_size(self) -> int:
        return self.clip_config.vision_config.image_size

    @property
    def patch_grid(self) -> int:
        vision = self.clip_config.vision_config
        return vision.image_size // vision.patch_size

    def head_sizes(self, head: str) -> tuple[int, int, int, int]:
        """(N normal prompts, E context vectors, L anomaly suffixes, E_A vectors each) of a head."""
        prompts = {"image": self.n_prompts_image, "pixel": self.n_prompts_pixel}
        if head not in prompts:
            raise ValueError(f"head={head!r}; expected 'image' or 'pixel'")
        return prompts[head], self.n_ctx, self.n_anomaly_prompts, self.n_anomaly_ctx

    @property
    def prompt_token_names(self) -> list[str]:
        """Added vocabulary tokens, one per learnable vector, in a fixed order (image head first)."""
        names = []
        for head, short in (("image", "img"), ("pixel", "pix")):
            n_prompts, n_ctx, n_anomaly, n_anomaly_ctx = self.head_sizes(head)
            names += [f"<{short}_n{i}_{e}>" for i in range(n_prompts) for e in range(n_ctx)]
            names += [f"<{short}_a{j}_{e}>" for j in range(n_anomaly) for e in range(n_anomaly_ctx)]
        return names


__all__ = ["AnomCLIPConfig"]
