"""Image metrics per defect type: each defect type's images against the normal ones, as a user reads a labelled
folder whose sub-folders are defect types (which kinds of defect the category catches, which it misses)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..metrics import average_precision, decision_counts, image_auroc

GOOD = "good"


def per_defect_metrics(scores: Sequence[float], defect_types: Sequence[str], threshold: Optional[float],
                       recall_key: str = "recall_at_stored_threshold") -> dict:
    """{defect type: {"images", "image_auroc", "image_ap", "recall_at_stored_threshold"}}: AUROC and AP of the
    normal ("good") images against that type's images, and the fraction of that type's images flagged at
    `threshold` (None without one), under `recall_key`. Metrics that need normal images are None when there are none."""
    scores = np.asarray(scores, dtype=np.float64)
    types = np.asarray(list(defect_types), dtype=object)
    normal = types == GOOD
    rows = {}
    for defect in sorted(set(types[~normal].tolist())):
        chosen = types == defect
        subset = normal | chosen
        labels = chosen[subset]
        both = bool(normal.any())
        rows[defect] = {
            "images": int(chosen.sum()),
            "image_auroc": image_auroc(scores[subset], labels) if both else None,
            "image_ap": average_precision(scores[subset], labels) if both else None,
            recall_key: None if threshold is None else
            decision_counts(scores[chosen], np.ones(int(chosen.sum()), bool), threshold)["recall"],
        }
    return rows
