"""Thresholds and map sizes given as arguments follow the stored range rule everywhere."""

from __future__ import annotations

import re

import pytest
from transformers import pipeline

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("threshold", [NAN, INF, "0.5", True, None])
def test_a_threshold_that_is_not_a_finite_number_is_refused_everywhere(threshold, loaded, tmp_path):
    # Before: NaN called every image "normal" (the CLI's --threshold already refused it), a string failed mid-run.
    from PIL import Image

    from anomclip_hf.inference.predictor import predict_files

    image = Image.new("RGB", (30, 30), (90, 120, 30))
    image.save(tmp_path / "a.png")
    detector = pipeline("image-anomaly-detection", model=loaded[0])
    if threshold is None:  # control: no threshold given, the stored one decides
        assert detector(image)["threshold"] == loaded[0].get_category("widget").metadata["decision_threshold"]
        return
    message = re.escape(f"={threshold!r}; expected a number greater than 0 and at most 2 (scores are in [0, 1])")
    with pytest.raises(ValueError, match="threshold" + message):
        detector(image, threshold=threshold)
    for keyword in ("threshold", "pixel_threshold"):
        with pytest.raises(ValueError, match=keyword + message):
            predict_files(loaded[0], [str(tmp_path / "a.png")], str(tmp_path / "out"), progress=False,
                          **{keyword: threshold})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [0, -5, True, 2.5, 4096])
def test_pipeline_output_size_out_of_range_is_refused(size, loaded):
    from PIL import Image

    detector = pipeline("image-anomaly-detection", model=loaded[0])
    with pytest.raises(ValueError, match=re.escape(f"output_size={size!r}; expected 1..2048")):
        detector(Image.new("RGB", (30, 30)), output_size=size)


