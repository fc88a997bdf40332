"""`evaluate` metric for image-level anomaly detection, loaded by file path (never from the Hub).

Load it with `anomclip_hf.metrics.load_evaluate_metric()` (or `evaluate.load(<path of this file>)`).
`evaluate` copies this script into its modules cache, so it imports the package absolutely; the
numbers come from anomclip_hf.metrics.functional (no duplicated logic).

Inputs (image level, 1-D):
    predictions: float anomaly score per image (higher = more anomalous)
    references:  0 (normal) / 1 (anomalous) per image
Output: {"image_auroc", "average_precision", "f1_max", "f1_threshold"}.
Pixel-level metrics (pixel AUROC, AUPRO) need maps and masks: use PixelMetricAccumulator instead.
"""

import datasets
import evaluate

from anomclip_hf.metrics.functional import average_precision, f1_max, image_auroc

_DESCRIPTION = "Image-level anomaly detection: ROC AUC, average precision and F1-max of per-image scores."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): anomaly score per image, higher means more anomalous.
    references (`list` of `int`): ground truth per image, 0 = normal, 1 = anomalous.
Returns:
    image_auroc (`float`), average_precision (`float`, step-wise as sklearn),
    f1_max (`float`), f1_threshold (`float`, predict anomalous when score >= it).
"""


class AnomalyDetectionMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 storage and python-list output: datasets' "numpy" format would hand back float32,
            # rounding the scores (and the returned threshold) before the computation
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        auroc = image_auroc(predictions, references)  # first, so input errors name image_auroc
        f1, threshold = f1_max(predictions, references)
        return {
            "image_auroc": auroc,
            "average_precision": average_precision(predictions, references),
            "f1_max": f1,
            "f1_threshold": threshold,
        }
