"""The image decision rule (torch-free: the ONNX Runtime detector uses it too)."""

from __future__ import annotations

from typing import Optional


def decision(score: float, threshold: Optional[float]) -> str:
    """"anomalous" at or above the threshold (the convention of `f1_max`'s threshold), else "normal";
    "" when no threshold is known."""
    return "" if threshold is None else ("anomalous" if score >= threshold else "normal")
