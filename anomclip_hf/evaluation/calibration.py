"""Calibrating a category's stored thresholds on data: `anomclip calibrate`.

The existing adapter scores the given folders; a rule turns the scores into a new decision threshold (and,
where it can, a new pixel threshold), which replaces the stored one in the adapter's category.json. The
replaced thresholds are kept in `threshold_estimate.history` with their rule, date and data, newest first.

Rules (what each promises on the calibration data, counted with "score >= threshold is anomalous"):

    f1                F1-max over normal + anomalous images (needs --abnormal-dir)
    recall=R          the highest threshold whose recall is at least R: the fewest false alarms that still
                      catch a fraction R of the anomalous images (needs --abnormal-dir)
    false-alarm=A     the lowest threshold that flags at most a fraction A of the normal images: the highest
                      recall under that false-alarm cap (normal images suffice)
    percentile        FACTOR x the Q-th percentile of the normal images' scores (default Q = 95, FACTOR = 1.1):
                      normal images alone, no target
    leave-one-out     (1 + MARGIN) x the highest leave-one-out score of the references, as `fit` computes it,
                      from the scores stored with the adapter (no images needed)

A threshold picked from scores is placed halfway into the gap below (f1, recall) or above (false-alarm) the
score that decides it, so that the same decisions on the calibration data hold with a margin either side
instead of hanging on one score's last bits.

Pixel thresholds: with masks (--mask-dir) the pixel F1-max threshold of all pixels; the normals-only rules
apply the same rule to the per-image maxima of the normal maps (as leave-one-out does); otherwise the pixel
threshold stays as it was.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..data import read_mask
from ..data.files import walk_images
from ..errors import ArgumentError, DatasetError
from ..flags.numeric import THRESHOLD_EXPECTED, THRESHOLD_RANGE
from ..inference.batch_scoring import score_images
from ..metrics import PixelMetricAccumulator, decision_counts, f1_max
from ..model.thresholds import DEFAULT_MARGIN

RULES = ("f1", "recall", "false-alarm", "percentile", "leave-one-out")
LABELLED_RULES = ("f1", "recall")  # need anomalous images
# SuperADD keeps 95th percentile x 1.421 for its own score scale; on this package's [0, 1] scores a factor
# of 1.1, the margin leave-one-out uses, keeps the threshold in range while still lifting it off the
# normal set's tail (at most 5 % of the calibration normals lie above the 95th percentile itself).
DEFAULT_PERCENTILE = 95.0
DEFAULT_FACTOR = 1.0 + DEFAULT_MARGIN
MAX_HISTORY = 32  # previous thresholds kept in category.json (each a few hundred bytes)
ZERO_SCORE = 1e-6  # a normal image scoring below this is one of the references (it is in the memory)


@dataclass(frozen=True)
class CalibrationRule:
    """A rule and its parameter: `target` (the recall or false-alarm rate), `percentile` and `factor`
    (percentile: the multiplier; leave-one-out: 1 + margin)."""

    name: str
    target: Optional[float] = None
    percentile: Optional[float] = None
    factor: Optional[float] = None

    def __post_init__(self):
        if self.name not in RULES:
            raise ArgumentError(f"calibration rule {self.name!r}; expected one of {', '.join(RULES)}")
        if self.name in ("recall", "false-alarm") and not _in_unit(self.target, self.name == "recall"):
            raise ArgumentError(f"{self.name}={self.target!r}; expected a rate "
                             f"{'greater than 0 and at most 1' if self.name == 'recall' else 'from 0 to 1'}")
        if self.name == "percentile" and not (_finite(self.percentile) and 0 < self.percentile <= 100):
            raise ArgumentError(f"percentile={self.percentile!r}; expected a number greater than 0 and at most 100")
        if self.name in ("percentile", "leave-one-out") and not (_finite(self.factor) and self.factor >= 1):
            raise ArgumentError(f"factor={self.factor!r}; expected a number >= 1 (1: no margin)")

    @property
    def needs_abnormal(self) -> bool:
        return self.name in LABELLED_RULES

    @property
    def needs_images(self) -> bool:
        return self.name != "leave-one-out"

    def describe(self) -> str:
        if self.name == "f1":
            return "F1-max on the calibration images"
        if self.name == "recall":
            return f"the highest threshold with recall >= {self.target:g} on the calibration images"
        if self.name == "false-alarm":
            return f"the lowest threshold with false-alarm rate <= {self.target:g} on the calibration normal images"
        if self.name == "percentile":
            return f"{self.factor:g} x the {self.percentile:g}th percentile of the normal images' scores"
        return f"{self.factor:g} x the highest leave-one-out score of the references"

    def as_record(self) -> dict:
        return {key: value for key, value in (("name", self.name), ("target", self.target),
                                              ("percentile", self.percentile), ("factor", self.factor))
                if value is not None}


def parse_target(text: str) -> CalibrationRule:
    """--target: "f1", "recall=R" or "false-alarm=A" (also "false_alarm=A", "fpr=A")."""
    name, _, value = text.strip().lower().partition("=")
    name = {"false_alarm": "false-alarm", "fpr": "false-alarm"}.get(name, name)
    if name == "f1" and not value:
        return CalibrationRule("f1")
    if name in ("recall", "false-alarm") and value:
        try:
            return CalibrationRule(name, target=float(value))
        except ValueError as error:
            raise ArgumentError(f"--target {text}: {error}") from None
    raise ArgumentError(f"--target {text!r}; expected f1, recall=R or false-alarm=A (R, A rates from 0 to 1, "
                     "e.g. recall=0.95 or false-alarm=0.01)")


# ------------------------------------------------------------------------------------------- data
@dataclass
class CalibrationData:
    """Scored calibration images: image scores, 0/1 labels, per-image map maxima, defect types, and the pixel
    F1-max threshold when masks were given."""

    paths: list
    scores: np.ndarray
    labels: np.ndarray
    map_maxima: np.ndarray
    defect_types: list
    pixel_f1_threshold: Optional[float] = None
    has_masks: bool = False

    @property
    def normal_scores(self) -> np.ndarray:
        return self.scores[~self.labels]

    @property
    def abnormal_scores(self) -> np.ndarray:
        return self.scores[self.labels]

    def summary(self, normal_dir: Optional[str], abnormal_dir: Optional[str]) -> dict:
        """What category.json records about the data a threshold came from."""
        return {"normal_images": int((~self.labels).sum()), "abnormal_images": int(self.labels.sum()),
                "masks": self.has_masks, "normal_dir": _folder_name(normal_dir),
                "abnormal_dir": _folder_name(abnormal_dir)}


def calibration_files(normal_dir: str, abnormal_dir: Optional[str] = None, mask_dir: Optional[str] = None
                      ) -> list[tuple]:
    """(path, label, defect type, mask or None) of every image of the folders: every image below normal_dir (normal), and below
    abnormal_dir (anomalous; its sub-folder is the defect type), with masks paired as `evaluate --dataset
    folder` pairs them."""
    from ..data.files import check_row_files
    from ..data.labelled_folder import LabelledFolder, abnormal_rows

    for flag, folder in (("--normal-dir", normal_dir), ("--abnormal-dir", abnormal_dir), ("--mask-dir", mask_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise DatasetError(f"{flag} {folder}: folder does not exist")
    if mask_dir is not None and abnormal_dir is None:
        raise ArgumentError("--mask-dir goes with --abnormal-dir (the masks of the anomalous images)")
    normals, _ = walk_images(normal_dir)
    if not normals:
        raise DatasetError(f"--normal-dir {normal_dir}: no images found")
    items = [(path, 0, "good", None) for path in sorted(normals)]
    if abnormal_dir is not None:
        # a normal folder inside the abnormal one (MVTec's test/good in test/) counts as normal only
        rows = abnormal_rows(LabelledFolder(normal_dir, abnormal_dir, mask_dir=mask_dir))
        check_row_files(rows)
        items += [(row["path"], 1, row["defect_type"], row["mask_path"]) for row in sorted(rows, key=lambda r: r["path"])]
    return items


def score_calibration_data(model, category: str, items: Sequence[tuple], batch_size: int = 16,
                           progress: bool = True) -> CalibrationData:
    """Score (path, label, defect type, mask) items with the model's category; with masks, accumulate the
    pixel F1-max at the model's scoring size."""
    paths = [item[0] for item in items]
    labels = np.array([bool(item[1]) for item in items])
    has_masks = any(item[3] is not None for item in items)
    pixels = PixelMetricAccumulator() if has_masks else None
    scores, maxima = np.zeros(len(items), np.float64), np.zeros(len(items), np.float64)
    for batch in score_images(model, paths, batch_size=batch_size, category=category, progress=progress,
                              description=f"calibrate {category}"):
        index = np.asarray(batch.indices)
        scores[index] = batch.image_scores
        maxima[index] = batch.anomaly_maps.reshape(len(index), -1).max(axis=1)
        if pixels is not None:
            height, width = batch.anomaly_maps.shape[1:]
            masks = np.stack([read_mask(items[i][3], size=(width, height)) if items[i][3] is not None
                              else np.zeros((height, width), np.uint8) for i in index])
            pixels.update(batch.anomaly_maps, masks)
    pixel_threshold = pixels.compute()["pixel_f1_threshold"] if pixels is not None else None
    return CalibrationData(paths, scores, labels, maxima, [item[2] for item in items], pixel_threshold, has_masks)


# ------------------------------------------------------------------------------------------- rules
def image_threshold(rule: CalibrationRule, data: Optional[CalibrationData],
                    leave_one_out_scores: Optional[Sequence[float]] = None) -> float:
    """The decision threshold `rule` picks (module docstring), checked against the stored range."""
    if rule.name == "leave-one-out":
        if not leave_one_out_scores:
            raise ArgumentError("the adapter stores no leave-one-out scores of its references (it was made from fewer "
                             "than 2 references): use another rule (--target, or --rule percentile with "
                             "--normal-dir)")
        return _in_range(rule.factor * max(leave_one_out_scores), rule)
    normals = data.normal_scores
    if not normals.size and rule.name != "recall":
        raise ArgumentError("no normal images to calibrate on (--normal-dir)")
    if rule.name == "percentile":
        return _in_range(rule.factor * float(np.percentile(normals, rule.percentile)), rule)
    if rule.name == "false-alarm":
        return _in_range(_false_alarm_threshold(normals, data.scores, rule.target), rule)
    abnormal = data.abnormal_scores
    if not abnormal.size:
        raise ArgumentError(f"--target {rule.name} needs anomalous images (--abnormal-dir)")
    if rule.name == "f1":
        _, best = f1_max(data.scores, data.labels)
        return _in_range(_gap_below(best, data.scores), rule)
    needed = max(1, math.ceil(rule.target * abnormal.size - 1e-9))  # recall = caught / all anomalous
    kth_highest = float(np.sort(abnormal)[::-1][needed - 1])
    return _in_range(_gap_below(kth_highest, data.scores), rule)


def pixel_threshold(rule: CalibrationRule, data: Optional[CalibrationData], current: Optional[float],
                    leave_one_out_maxima: Optional[Sequence[float]] = None) -> Optional[float]:
    """The pixel threshold that goes with `rule` (module docstring); `current` where the rule sets none."""
    if rule.name == "leave-one-out":
        return _pixel_in_range(rule.factor * max(leave_one_out_maxima), current) if leave_one_out_maxima else current
    if data is not None and data.pixel_f1_threshold is not None:
        return _pixel_in_range(data.pixel_f1_threshold, current)
    if rule.name == "percentile":
        normal_maxima = data.map_maxima[~data.labels]
        return _pixel_in_range(rule.factor * float(np.percentile(normal_maxima, rule.percentile)), current)
    return current


def _false_alarm_threshold(normals: np.ndarray, scores: np.ndarray, rate: float) -> float:
    """The lowest threshold flagging at most floor(rate x N) of the N normal scores."""
    allowed = int(math.floor(rate * normals.size + 1e-9))
    if allowed >= normals.size:
        return float(scores.min())  # every image may be flagged
    boundary = float(np.sort(normals)[::-1][allowed])  # flagging it (and all above) is one too many
    above = scores[scores > boundary]
    return (boundary + float(above.min())) / 2 if above.size else boundary + max(1e-6, 1e-6 * boundary)


def _gap_below(threshold: float, scores: np.ndarray) -> float:
    """Halfway between `threshold` (a score) and the next lower score: the same decisions, with a margin."""
    below = scores[scores < threshold]
    return (threshold + float(below.max())) / 2 if below.size else threshold


def _in_range(value: float, rule: CalibrationRule) -> float:
    low, high = THRESHOLD_RANGE
    if not (math.isfinite(value) and low < value <= high):
        hint = " (lower --factor)" if rule.name in ("percentile", "leave-one-out") else ""
        raise ArgumentError(f"the rule {rule.describe()!r} gives the threshold {value!r}; a stored threshold must be "
                         f"{THRESHOLD_EXPECTED}{hint}")
    return float(value)


def _pixel_in_range(value: float, current: Optional[float]) -> Optional[float]:
    low, high = THRESHOLD_RANGE
    return float(value) if math.isfinite(value) and low < value <= high else current


# ------------------------------------------------------------------------------------------- the record
@dataclass
class Calibration:
    """A calibration's outcome: the rule, old and new thresholds, and what each does on the data."""

    rule: CalibrationRule
    before: dict  # {"image": old decision threshold, "pixel": old pixel threshold}
    after: dict
    data_summary: dict
    before_counts: Optional[dict] = None  # decision_counts at the old threshold (None: no old one)
    after_counts: Optional[dict] = None
    warnings: list = field(default_factory=list)


def calibrated_estimate(metadata: dict, rule: CalibrationRule, image: float, pixel: Optional[float],
                        data_summary: dict, when: Optional[str] = None) -> dict:
    """The category.json `threshold_estimate` after a calibration: the new rule and thresholds, the
    references' leave-one-out scores carried over (a later leave-one-out calibration needs them), and the
    replaced thresholds first in `history` (at most MAX_HISTORY entries)."""
    old = dict(metadata.get("threshold_estimate") or {})
    history = list(old.pop("history", []) or [])
    if metadata.get("decision_threshold") is not None or old:
        if "rule" in old:
            previous_rule = old["rule"]
        elif "margin" in old:  # a leave-one-out estimate as `fit` writes it
            previous_rule = {"name": "leave-one-out", "factor": 1 + old["margin"]}
        else:
            previous_rule = {"name": "unrecorded"}
        history.insert(0, {"rule": previous_rule, "method": old.get("method", "not recorded"),
                           "image": metadata.get("decision_threshold"), "pixel": metadata.get("pixel_threshold"),
                           "when": old.get("when"), "data": old.get("data")})
    estimate = {"image": float(image), "pixel": pixel, "method": rule.describe(), "rule": rule.as_record(),
                "when": when or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": data_summary,
                "history": history[:MAX_HISTORY]}
    if rule.name == "leave-one-out":
        estimate["margin"] = rule.factor - 1
    for key in ("leave_one_out_image_scores", "leave_one_out_pixel_maxima"):
        if key in old:
            estimate[key] = old[key]
    return estimate


def leave_one_out_record(metadata: dict) -> tuple[Optional[list], Optional[list]]:
    """The references' leave-one-out image scores and map maxima stored with the adapter (None: none)."""
    estimate = metadata.get("threshold_estimate") or {}
    return estimate.get("leave_one_out_image_scores"), estimate.get("leave_one_out_pixel_maxima")


def calibrate_category(model, category: str, rule: CalibrationRule, data: Optional[CalibrationData],
                       data_summary: dict) -> Calibration:
    """Pick new thresholds for `category` of `model` by `rule` and store them in its metadata (save the
    category to write them into its adapter); returns what changed and what each threshold does on `data`."""
    state = model.get_category(category)
    if state.memory_bank is None:  # category.json keeps threshold_estimate null without references
        raise ArgumentError(f"category {state.name!r} has no reference images (no memory): calibrate needs an adapter "
                            "made from references; pass --threshold to predict instead")
    metadata = state.metadata
    before = {"image": metadata.get("decision_threshold"), "pixel": metadata.get("pixel_threshold")}
    loo_scores, loo_maxima = leave_one_out_record(metadata)
    image = image_threshold(rule, data, loo_scores)
    pixel = pixel_threshold(rule, data, before["pixel"], loo_maxima)
    warnings = []
    if data is not None:
        zeros = int((data.normal_scores < ZERO_SCORE).sum())
        if zeros:
            warnings.append(f"{zeros} normal image(s) score 0: they are the adapter's own references (its memory); "
                            "calibrate on normal images the adapter was not built from")
    estimate = calibrated_estimate(metadata, rule, image, pixel, data_summary)
    metadata.update(decision_threshold=image, pixel_threshold=pixel, threshold_estimate=estimate)
    counts = (lambda t: None if data is None or t is None else decision_counts(data.scores, data.labels, t))
    return Calibration(rule, before, {"image": image, "pixel": pixel}, data_summary, counts(before["image"]),
                       counts(image), warnings)


def format_calibration(result: Calibration) -> str:
    """The before/after table `anomclip calibrate` prints."""
    lines = [f"rule: {result.rule.describe()}"]
    data = result.data_summary
    if data:
        lines.append(f"data: {data['normal_images']} normal, {data['abnormal_images']} anomalous image(s)"
                     + (", with masks" if data.get("masks") else ""))
    header = f"{'':8} {'threshold':>10} {'precision':>10} {'recall':>8} {'false-alarm':>12} {'flagged':>8}"
    lines.append(header)
    for name, threshold, counts in (("before", result.before["image"], result.before_counts),
                                    ("after", result.after["image"], result.after_counts)):
        cells = [_cell(threshold, 10)]
        if counts is None:
            cells += ["", "", "", ""]
        else:
            # without anomalous images a precision says nothing (every flagged image is a false alarm)
            precision = counts["precision"] if counts["tp"] + counts["fn"] else None
            cells += [_cell(precision, 10), _cell(counts["recall"], 8), _cell(counts["false_alarm_rate"], 12),
                      f"{counts['tp'] + counts['fp']:>8}"]
        lines.append(f"{name:8} " + " ".join(cell if cell else " " * width for cell, width in
                                            zip(cells, (10, 10, 8, 12, 8))))
    pixel_before, pixel_after = result.before["pixel"], result.after["pixel"]
    lines.append(f"pixel threshold: {_cell(pixel_before, 0).strip() or 'none'} -> {_cell(pixel_after, 0).strip() or 'none'}"
                 + (" (unchanged)" if pixel_before == pixel_after else ""))
    return "\n".join(lines)


def _cell(value, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.4f}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in_unit(value, open_at_zero: bool) -> bool:
    return _finite(value) and (0 < value <= 1 if open_at_zero else 0 <= value <= 1)


def _folder_name(folder: Optional[str]) -> Optional[str]:
    """The folder as given, for the record (an absolute path would reveal the user's file system in a pushed
    adapter: only its last part is kept)."""
    return None if folder is None else os.path.basename(os.path.normpath(folder))
