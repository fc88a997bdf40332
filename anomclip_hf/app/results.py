"""A scored set of test images, decided at any threshold without scoring again.

The normalised score maps the category's stored threshold to 0.5 (`thresholds.normalized_score`), so it
stays put while the slider moves; the decision follows the slider.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

from ..inference.visualization import anomaly_panel
from ..io.image_io import load_image
from ..io.labels import PIPELINE_CHECK_NOTE
from ..model.thresholds import decision, normalized_score

LARGE_VIEW_SIZE = 384  # pixels on the short side of each of the three panels


@dataclass
class ScoredImage:
    name: str  # the uploaded file's name (made unique)
    path: str  # the staged copy
    overlay: str  # predict_files' overlay PNG (labelled with the decision at the stored threshold)
    score: float
    anomaly_map: np.ndarray
    thumbnail: str = ""  # the same panels without a decision label: the gallery's picture (the slider decides)


@dataclass
class ScoredSet:
    category: str
    stored_threshold: Optional[float]
    pixel_threshold: Optional[float]
    images: list[ScoredImage] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file name, why not scored)
    pipeline_check: bool = False

    def rows(self, threshold: Optional[float]) -> list[dict]:
        """One row per image: name, image_score, normalized_score ("" without a stored threshold), decision."""
        return [{"name": image.name, "image_score": image.score,
                 "normalized_score": self.normalized(image.score),
                 "decision": decision(image.score, threshold)} for image in self.images]

    def normalized(self, score: float) -> Optional[float]:
        return normalized_score(score, self.stored_threshold)

    def anomalous(self, threshold: Optional[float]) -> int:
        return sum(row["decision"] == "anomalous" for row in self.rows(threshold))

    @property
    def note(self) -> str:
        return PIPELINE_CHECK_NOTE if self.pipeline_check else ""


def write_scores_csv(scored: ScoredSet, threshold: Optional[float], path: str) -> str:
    """scores.csv as the page shows it: name, image_score, normalized_score, decision, threshold[, note]."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "image_score", "normalized_score", "decision", "threshold"]
                        + (["note"] if scored.note else []))
        for row in scored.rows(threshold):
            normalized = "" if row["normalized_score"] is None else f"{row['normalized_score']:.6f}"
            writer.writerow([row["name"], f"{row['image_score']:.6f}", normalized, row["decision"],
                             "" if threshold is None else f"{threshold:.6f}"] + ([scored.note] if scored.note else []))
    return path


def write_thumbnails(scored: ScoredSet, folder: str) -> None:
    """The gallery pictures: overlay panels without the score/decision label, which would go stale when the
    threshold slider moves (the gallery captions carry the live decision)."""
    os.makedirs(folder, exist_ok=True)
    for number, image in enumerate(scored.images):
        image.thumbnail = os.path.join(folder, f"{number:05d}.png")
        anomaly_panel(load_image(image.path), image.anomaly_map, pixel_threshold=scored.pixel_threshold,
                      note=scored.note).save(image.thumbnail)


def large_view(scored: ScoredSet, index: int, threshold: Optional[float]) -> Image.Image:
    """The overlay panel of image `index`, enlarged, labelled with the decision at `threshold`."""
    image = scored.images[index]
    picture = load_image(image.path)
    factor = LARGE_VIEW_SIZE / min(picture.size)
    if factor > 1:
        picture = picture.resize((round(picture.width * factor), round(picture.height * factor)), Image.BICUBIC)
    return anomaly_panel(picture, image.anomaly_map, score=image.score, threshold=threshold,
                         pixel_threshold=scored.pixel_threshold, note=scored.note)
