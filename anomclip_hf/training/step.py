"""One PromptAD optimisation step over both heads: the only training math, shared by the loop and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..model.category import HEADS
from ..model.losses import promptad_loss
from ..model.modeling_anomclip import AnomCLIPModel
from ..model.precision import PrecisionChoice, tower_autocast
from ..model.vv_attention import VisionFeatures
from ..errors import ConfigurationError


@dataclass
class ShotFeatures:
    """Frozen, L2-normalised image features of the k shots: computed once per run (no augmentation)."""

    image: torch.Tensor  # (k, D) global embeddings, input of the image-level head
    pixel: torch.Tensor  # (k, P, D) V-V patch embeddings, input of the pixel-level head

    def for_head(self, head: str) -> torch.Tensor:
        if head not in HEADS:
            raise ConfigurationError(f"head={head!r}; expected one of {HEADS}")
        return getattr(self, head)  # the fields are named after the heads

    @classmethod
    def from_vision(cls, features: VisionFeatures) -> "ShotFeatures":
        return cls(image=features.global_embeds.detach().float(), pixel=features.patch_embeds.detach().float())


def encode_shots(model: AnomCLIPModel, pixel_values: torch.Tensor) -> ShotFeatures:
    """One float32 forward of the frozen vision tower over the shots."""
    with torch.no_grad():
        return ShotFeatures.from_vision(model.encode_images(pixel_values))


def build_optimizer(parameters, config) -> torch.optim.SGD:
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(optimizer, config) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine decay from lr to min_lr over the whole run, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.total_epochs, eta_min=config.min_lr)


def promptad_objective(model: AnomCLIPModel, category: str, features: ShotFeatures, config, use_margin: bool,
                       temperature: Optional[float] = None,
                       precision: Optional[PrecisionChoice] = None) -> dict[str, torch.Tensor]:
    """Loss terms of both heads ("image/loss_ce", ..., "pixel/loss_eam") and their sum "loss".

    The heads own disjoint rows of the prompt table, so summing them trains each head on its own loss.
    precision: the text tower runs under its autocast (None: float32); the losses are float32 either way.
    """
    temperature = model.temperature if temperature is None else temperature
    terms: dict[str, torch.Tensor] = {}
    total = None
    for head in HEADS:
        with tower_autocast(precision, model.device):
            text = model.encode_prompts(category, head)
        text = text.float()  # the losses are float32 whatever the tower ran in
        head_terms = promptad_loss(features.for_head(head), text, temperature, use_margin=use_margin,
                                   margin=config.eam_margin, align_weight=config.align_weight)
        terms.update({f"{head}/{name}": value for name, value in head_terms.items()})
        total = head_terms["loss"] if total is None else total + head_terms["loss"]
    terms["loss"] = total
    return terms


def training_step(model: AnomCLIPModel, category: str, features: ShotFeatures, optimizer, config, use_margin: bool,
                  backward: Optional[Callable[[torch.Tensor], None]] = None,
                  temperature: Optional[float] = None, precision: Optional[PrecisionChoice] = None) -> dict[str, float]:
    """Zero the gradients, compute the objective, backpropagate (`backward`, e.g. accelerator.backward),
    take one optimiser step; returns the terms as floats. The gradients stay on the parameters."""
    optimizer.zero_grad(set_to_none=True)
    terms = promptad_objective(model, category, features, config, use_margin, temperature, precision)
    (backward or torch.Tensor.backward)(terms["loss"])
    optimizer.step()
    return {name: float(value.detach()) for name, value in terms.items()}
