"""PromptAD losses (docs/method/promptad.md, "Losses"): CLIP-style alignment, explicit anomaly margin, suffix alignment."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TextFeatures:
    """Unnormalised per-prompt text features of one head."""

    normal: torch.Tensor  # (N, D)
    manual: torch.Tensor  # (N*M, D)
    learned: torch.Tensor  # (N*L, D); empty for untrained (zero-shot) prompts

    @property
    def anomaly(self) -> torch.Tensor:
        return torch.cat([self.manual, self.learned]) if self.learned.numel() else self.manual

    def float(self) -> "TextFeatures":
        """The same features in float32 (a text tower under autocast returns bf16/fp16)."""
        return TextFeatures(normal=self.normal.float(), manual=self.manual.float(), learned=self.learned.float())

    def prototypes(self) -> torch.Tensor:
        """(2, D) [normal, anomaly]: normalised means of the unnormalised prompt features."""
        return torch.stack([F.normalize(self.normal.mean(0), dim=-1), F.normalize(self.anomaly.mean(0), dim=-1)])


def alignment_logits(visual: torch.Tensor, text: TextFeatures, temperature: float) -> torch.Tensor:
    """tau * [v.n, v.a_1, ..., v.a_K]: the normal prototype, then every normalised anomaly prompt. (..., 1+K)."""
    normal = text.prototypes()[0:1]
    anomalies = F.normalize(text.anomaly, dim=-1)
    return temperature * visual @ torch.cat([normal, anomalies]).T


def alignment_loss(visual: torch.Tensor, text: TextFeatures, temperature: float) -> torch.Tensor:
    """L_ce: cross-entropy with target 0 (normal) over every visual row (image or patch)."""
    logits = alignment_logits(visual, text, temperature).reshape(-1, 1 + text.anomaly.shape[0])
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def anomaly_margin_loss(visual: torch.Tensor, text: TextFeatures, margin: float = 0.0) -> torch.Tensor:
    """L_eam: mean relu(||v - n||^2 - ||v - a||^2 + margin), distances over the feature axis.

    Works per image (B, D) and per patch (B, P, D) alike; the reference reduced its pixel variant over the
    patch axis, a bug this function deliberately does not copy.
    """
    normal, anomaly = text.prototypes()
    to_normal = (visual - normal).pow(2).sum(dim=-1)
    to_anomaly = (visual - anomaly).pow(2).sum(dim=-1)
    return F.relu(to_normal - to_anomaly + margin).mean()


def suffix_alignment_loss(text: TextFeatures) -> torch.Tensor:
    """L_align: || mean normalize(manual) - mean normalize(learned) ||^2."""
    manual = F.normalize(text.manual, dim=-1).mean(0)
    learned = F.normalize(text.learned, dim=-1).mean(0)
    return (manual - learned).pow(2).sum()


def promptad_loss(visual: torch.Tensor, text: TextFeatures, temperature: float, use_margin: bool,
                  margin: float = 0.0, align_weight: float = 0.001) -> dict[str, torch.Tensor]:
    """The terms and their total: L_ce + [L_eam] + lambda * L_align (L_eam only when `use_margin`)."""
    terms = {
        "loss_ce": alignment_loss(visual, text, temperature),
        "loss_align": suffix_alignment_loss(text),
    }
    total = terms["loss_ce"] + align_weight * terms["loss_align"]
    if use_margin:
        terms["loss_eam"] = anomaly_margin_loss(visual, text, margin)
        total = total + terms["loss_eam"]
    terms["loss"] = total
    return terms
