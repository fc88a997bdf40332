"""Metrics of a predict run whose images carry labels (`anomclip predict --labels`).

Labels come from a folder layout or a CSV:

    DIR/normal/... or DIR/good/...   normal images
    DIR/<defect type>/...            anomalous images of that type (any other sub-folder)
    FILE.csv                         rows "path,label": label 0/1, normal/good or anomalous/anomaly/abnormal/
                                     defect (a header row is allowed); relative paths from the CSV's folder

Images are matched by their resolved path; scored images without a label and labels without a score are
counted and reported, never guessed.
"""

from __future__ import annotations

import csv
import os
from typing import Mapping, Optional

import numpy as np

from ..data.files import walk_images
from ..errors import DatasetError
from ..metrics import average_precision, decision_counts, f1_max, image_auroc
from .per_defect import per_defect_metrics

NORMAL_FOLDERS = ("normal", "good")
NORMAL_WORDS = ("0", "normal", "good", "ok")
ANOMALOUS_WORDS = ("1", "anomalous", "anomaly", "abnormal", "defect", "defective", "bad", "ng")
METRICS_FILE = "metrics.json"


def read_labels(source: str) -> dict:
    """{resolved image path: defect type ("good" for normal images)} of a labelled folder or CSV file."""
    if os.path.isdir(source):
        return _folder_labels(source)
    if os.path.isfile(source):
        return _csv_labels(source)
    raise DatasetError(f"--labels {source}: no such folder or CSV file")


def _folder_labels(folder: str) -> dict:
    labels = {}
    subfolders = sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))
    if not any(name.lower() in NORMAL_FOLDERS for name in subfolders):
        raise DatasetError(f"--labels {folder}: expected a normal/ (or good/) sub-folder beside the defect-type "
                         f"folders; found {subfolders or 'no sub-folders'}")
    for name in subfolders:
        images, _ = walk_images(os.path.join(folder, name))
        defect = "good" if name.lower() in NORMAL_FOLDERS else name
        labels.update({os.path.realpath(path): defect for path in images})
    return labels


def _csv_labels(path: str) -> dict:
    base = os.path.dirname(os.path.abspath(path))
    labels = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DatasetError(f"--labels {path}, line {number}: expected 'path,label', got {row!r}")
            image, label = row[0].strip(), row[1].strip().lower()
            if number == 1 and label not in NORMAL_WORDS + ANOMALOUS_WORDS:
                continue  # a header row
            if label in NORMAL_WORDS:
                defect = "good"
            elif label in ANOMALOUS_WORDS:
                defect = "anomalous"
            else:
                raise DatasetError(f"--labels {path}, line {number}: label {row[1]!r}; expected 0/1, normal/good or "
                                 "anomalous/anomaly/abnormal/defect")
            labels[os.path.realpath(os.path.join(base, image))] = defect
    if not labels:
        raise DatasetError(f"--labels {path}: no 'path,label' rows")
    return labels


def labelled_metrics(scores: Mapping[str, float], labels: Mapping[str, str], threshold: Optional[float]) -> dict:
    """AUROC, AP, F1-max, and at `threshold` the confusion counts, precision, recall, false-alarm rate and F1,
    plus per-defect-type rows, of the scored images that have a label. Metrics that need both classes are
    None (null in metrics.json) when one is missing."""
    matched = [(labels[os.path.realpath(path)], score) for path, score in scores.items()
               if os.path.realpath(path) in labels]
    scored = {os.path.realpath(path) for path in scores}
    types = [defect for defect, _ in matched]
    values = np.array([score for _, score in matched], dtype=np.float64)
    y = np.array([defect != "good" for defect in types], dtype=bool)
    both = bool(y.any() and (~y).any())
    best = f1_max(values, y) if both else (None, None)
    return {
        "labelled_images": len(matched), "normal": int((~y).sum()), "anomalous": int(y.sum()),
        "scored_without_label": len(scores) - len(matched),
        "labelled_not_scored": sum(1 for path in labels if path not in scored),
        "image_auroc": image_auroc(values, y) if both else None,
        "image_ap": average_precision(values, y) if both else None,
        "image_f1_max": best[0], "f1_max_threshold": best[1],
        "at_threshold": None if threshold is None or not matched else decision_counts(values, y, threshold),
        "per_defect": per_defect_metrics(values, types, threshold, "recall_at_threshold") if both else {},
    }


def format_labelled_metrics(metrics: dict) -> str:
    """The lines `predict --labels` adds to its summary."""
    def number(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"labels: {metrics['labelled_images']} labelled images ({metrics['normal']} normal, "
             f"{metrics['anomalous']} anomalous)" + (f"; {metrics['scored_without_label']} scored without a label"
                                                     if metrics["scored_without_label"] else "")
             + (f"; {metrics['labelled_not_scored']} labelled but not scored" if metrics["labelled_not_scored"]
                else ""),
             f"image AUROC {number(metrics['image_auroc'])}, AP {number(metrics['image_ap'])}, best F1 "
             f"{number(metrics['image_f1_max'])} at {number(metrics['f1_max_threshold'])}"]
    at = metrics["at_threshold"]
    if at is None:
        lines.append("no decision threshold: no confusion counts")
    else:
        lines.append(f"at threshold {at['threshold']:.4f}: F1 {number(at['f1'])}, precision {number(at['precision'])}, "
                     f"recall {number(at['recall'])}, false-alarm rate {number(at['false_alarm_rate'])}; "
                     f"TP {at['tp']}, FP {at['fp']}, TN {at['tn']}, FN {at['fn']}")
    return "\n".join(lines)
