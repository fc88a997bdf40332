"""Result tables in the layout of the paper: one row per category, one column per shot count, mean +- std
over seeds (in %), plus the category mean."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from typing import Sequence

import numpy as np

# (key in the cell metrics, title in the tables)
METRICS = (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC"), ("aupro", "PRO (AUPRO@0.3)"),
           ("image_f1_max", "Image F1-max"), ("pixel_f1_max", "Pixel F1-max"), ("image_ap", "Image AP"),
           ("pixel_ap", "Pixel AP"))
# Decision thresholds: the F1-max one of the labelled test split, and the category's stored (leave-one-out) one.
THRESHOLD_COLUMNS = ("image_f1_threshold", "stored_threshold", "stored_threshold_f1")
CSV_COLUMNS = ("dataset", "category", "shots", "seed", "source") + tuple(key for key, _ in METRICS) + (
    THRESHOLD_COLUMNS + ("test_images", "resolution"))


def _optional(value) -> str:
    return "" if value is None else f"{value:.6f}"


def summarize(cells: Sequence[dict]) -> dict:
    """{metric: {category: {shots: {mean, std, n}}}} plus a "mean" row: the mean over categories of the
    per-category means, and the std over seeds of the per-seed category means (the paper's convention)."""
    categories = sorted({c["category"] for c in cells})
    shot_counts = sorted({c["shots"] for c in cells})
    seeds = sorted({c["seed"] for c in cells})
    tables = {}
    for key, _ in METRICS:
        table = {}
        for category in categories:
            table[category] = {}
            for k in shot_counts:
                values = [c["metrics"][key] for c in cells if c["category"] == category and c["shots"] == k]
                if values:
                    table[category][k] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                          "n": len(values)}
        table["mean"] = {}
        for k in shot_counts:
            per_seed = []
            for seed in seeds:
                values = [c["metrics"][key] for c in cells if c["shots"] == k and c["seed"] == seed]
                if len(values) == len(categories):
                    per_seed.append(float(np.mean(values)))
            means = [table[cat][k]["mean"] for cat in categories if k in table[cat]]
            if len(means) == len(categories):
                table["mean"][k] = {"mean": float(np.mean(means)), "std": float(np.std(per_seed)) if per_seed else 0.0,
                                    "n": len(per_seed)}
        tables[key] = table
    return {"categories": categories, "shots": shot_counts, "seeds": seeds, "tables": tables}


def variant_label(settings) -> str:
    """Which scoring a table is (its row name in a comparison): PromptAD, a memory alone, or the fused DINOv2."""
    backbone = getattr(settings, "memory_backbone", None)
    mode = getattr(settings, "mode", None) or "full"
    prompts = "learned prompts" if settings.train else "hand-written prompts"
    if mode == "text":
        return f"prompts alone ({prompts})"
    if mode == "memory":
        return (f"DINOv2 memory alone ({backbone}; AnomalyDINO scoring)" if backbone
                else "CLIP memory alone (PromptAD's visual memory)")
    return (f"fused: DINOv2 memory ({backbone}) + {prompts}" if backbone
            else f"PromptAD: CLIP memory + {prompts}")


def _markdown(summary: dict, settings, label: str = "") -> str:
    lines = [f"# Results: {settings.dataset}", "", *([f"**{label}**", ""] if label else []),
             f"Scoring: {variant_label(settings)}.", "",
             f"Pixel metrics at {settings.resolution}x{settings.resolution} ({settings.pixel_mode} mode); "
             f"mean +- std over seeds {summary['seeds']}, in %; final-epoch prompts"
             f"{'' if settings.train else ' (no prompt training: memory + hand-written prompts)'}.", ""]
    header = "| category | " + " | ".join(f"{k}-shot" for k in summary["shots"]) + " |"
    rule = "|---|" + "---|" * len(summary["shots"])
    for key, title in METRICS:
        table = summary["tables"][key]
        lines += [f"## {title}", "", header, rule]
        for row in summary["categories"] + ["mean"]:
            cells = []
            for k in summary["shots"]:
                entry = table[row].get(k)
                cells.append("" if entry is None else f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}")
            name = "**mean**" if row == "mean" else row
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(output_dir: str, cells: Sequence[dict], settings, base: str) -> dict:
    """Write results.csv (one row per cell), results.json (cells + tables) and results.md (tables)."""
    os.makedirs(output_dir, exist_ok=True)
    summary = summarize(cells)
    # One cell on a random base makes the whole table a pipeline check.
    label = next((cell["note"] for cell in cells if cell.get("pipeline_check")), "")
    with open(os.path.join(output_dir, "results.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS + (("note",) if label else ()))
        writer.writeheader()
        for cell in cells:
            writer.writerow({"dataset": cell["dataset"], "category": cell["category"], "shots": cell["shots"],
                             "seed": cell["seed"], "source": cell.get("source"),
                             **{key: f"{cell['metrics'][key]:.6f}" for key, _ in METRICS},
                             **{key: _optional(cell["metrics"].get(key)) for key in THRESHOLD_COLUMNS},
                             "test_images": cell["metrics"]["test_images"], "resolution": settings.resolution,
                             **({"note": label} if label else {})})
    payload = {"base": base, "variant": variant_label(settings),
               **({"pipeline_check": True, "note": label} if label else {}),
               "settings": asdict(settings), **summary,
               "cells": [{k: v for k, v in c.items() if k != "settings"} for c in cells]}
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(_markdown(summary, settings, label))
    return payload
