"""Result tables in the layout of the paper: one row per category, one column per shot count, mean +- std
over seeds (in %), plus the category mean."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict
from typing import Sequence

import numpy as np

from ..io.atomic_io import write_json

# (key in the cell metrics, title in the tables)
METRICS = (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC"), ("aupro", "PRO (AUPRO@0.3)"),
           ("image_f1_max", "Image F1-max"), ("pixel_f1_max", "Pixel F1-max"), ("image_ap", "Image AP"),
           ("pixel_ap", "Pixel AP"))
PIXEL_KEYS = ("pixel_auroc", "aupro", "pixel_f1_max", "pixel_ap")
PER_DEFECT_METRICS = ("image_auroc", "image_ap", "recall_at_stored_threshold")
# Decision thresholds: the F1-max one of the labelled test split, and the category's stored (leave-one-out) one.
THRESHOLD_COLUMNS = ("image_f1_threshold", "stored_threshold", "stored_threshold_f1")
CSV_COLUMNS = ("dataset", "category", "shots", "seed", "source") + tuple(key for key, _ in METRICS) + (
    THRESHOLD_COLUMNS + ("test_images", "resolution"))


def _optional(value) -> str:
    return f"{value:.6f}" if _present(value) else ""


def _write_per_defect_csv(path: str, cells: Sequence[dict]) -> None:
    """results_per_defect.csv: one row per cell and defect type."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("dataset", "category", "shots", "seed", "defect_type", "images") + PER_DEFECT_METRICS)
        for cell in cells:
            for defect, row in sorted((cell["metrics"].get("per_defect") or {}).items()):
                writer.writerow((cell["dataset"], cell["category"], cell["shots"], cell["seed"], defect, row["images"],
                                 *(_optional(row.get(key)) for key in PER_DEFECT_METRICS)))


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
                values = [c["metrics"][key] for c in cells if c["category"] == category and c["shots"] == k
                          and _present(c["metrics"].get(key))]
                if values:
                    table[category][k] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                          "n": len(values)}
        table["mean"] = {}
        for k in shot_counts:
            per_seed = []
            for seed in seeds:
                values = [c["metrics"][key] for c in cells if c["shots"] == k and c["seed"] == seed
                          and _present(c["metrics"].get(key))]
                if len(values) == len(categories):
                    per_seed.append(float(np.mean(values)))
            means = [table[cat][k]["mean"] for cat in categories if k in table[cat]]
            if len(means) == len(categories):
                table["mean"][k] = {"mean": float(np.mean(means)), "std": float(np.std(per_seed)) if per_seed else 0.0,
                                    "n": len(per_seed)}
        tables[key] = table
    return {"categories": categories, "shots": shot_counts, "seeds": seeds, "tables": tables,
            "per_defect": summarize_per_defect(cells)}


def _present(value) -> bool:
    """A metric that was computed (None: it does not exist for the data, e.g. pixel metrics without masks)."""
    return value is not None and math.isfinite(value)


def summarize_per_defect(cells: Sequence[dict]) -> list[dict]:
    """One row per (category, defect type, shots): the number of images and, over seeds, mean and std of the
    image AUROC and AP of normal images against that type's, and of its recall at the stored threshold."""
    groups: dict = {}
    for cell in cells:
        for defect, row in (cell["metrics"].get("per_defect") or {}).items():
            groups.setdefault((cell["category"], defect, cell["shots"]), []).append(row)
    summary = []
    for (category, defect, shots), rows in sorted(groups.items()):
        entry = {"category": category, "defect_type": defect, "shots": shots, "images": rows[0]["images"],
                 "seeds": len(rows)}
        for key in PER_DEFECT_METRICS:
            values = [row[key] for row in rows if _present(row.get(key))]
            entry[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else None
        summary.append(entry)
    return summary


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
    missing = [key for key, _ in METRICS if not any(summary["tables"][key][row] for row in summary["tables"][key])]
    if missing:
        said = "no masks: pixel metrics" if set(missing) <= set(PIXEL_KEYS) else "not computed"
        lines += [f"{said} ({', '.join(title for key, title in METRICS if key in missing)}) are not reported.", ""]
    for key, title in METRICS:
        if key in missing:
            continue
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
    lines += _per_defect_markdown(summary["per_defect"])
    return "\n".join(lines)


def _per_defect_markdown(rows: Sequence[dict]) -> list[str]:
    if not rows:
        return []

    def cell(entry):
        return "" if entry is None else f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"

    lines = ["## Per defect type", "",
             "Each defect type's images against the normal test images (in %; recall at the category's stored "
             "threshold).", "", "| category | defect type | shots | images | Image AUROC | Image AP | "
             "recall at stored threshold |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['category']} | {row['defect_type']} | {row['shots']} | {row['images']} | "
                     f"{cell(row['image_auroc'])} | {cell(row['image_ap'])} | "
                     f"{cell(row['recall_at_stored_threshold'])} |")
    return lines + [""]


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
                             **{key: _optional(cell["metrics"].get(key)) for key, _ in METRICS},
                             **{key: _optional(cell["metrics"].get(key)) for key in THRESHOLD_COLUMNS},
                             "test_images": cell["metrics"]["test_images"], "resolution": settings.resolution,
                             **({"note": label} if label else {})})
    payload = {"base": base, "variant": variant_label(settings),
               **({"pipeline_check": True, "note": label} if label else {}),
               "settings": asdict(settings), **summary,
               "cells": [{k: v for k, v in c.items() if k != "settings"} for c in cells]}
    write_json(os.path.join(output_dir, "results.json"), payload)  # strict JSON: null where a value is missing
    _write_per_defect_csv(os.path.join(output_dir, "results_per_defect.csv"), cells)
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(_markdown(summary, settings, label))
    return payload
