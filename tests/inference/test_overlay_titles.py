"""The overlay's first panel says "true defect" only when a mask is drawn on it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anomclip_hf.inference.visualization import anomaly_panel, overlay_layout, panel_titles


def test_titles_name_only_what_is_drawn():
    assert [t for t, _ in panel_titles(False, True)] == ["image", "anomaly map", "predicted defect"]
    assert [t for t, _ in panel_titles(True, True)] == ["image (+ true defect)", "anomaly map", "predicted defect"]
    assert panel_titles(True, False)[2][0] == "image (no pixel threshold)"


def test_the_rendered_title_changes_with_a_mask_only():
    image = Image.new("RGB", (400, 400), (120, 130, 140))
    anomaly_map = np.zeros((400, 400), np.float32)
    empty_mask = np.zeros((400, 400), np.uint8)  # a mask with no defect: the panels stay the same, the title not
    without = np.asarray(anomaly_panel(image, anomaly_map, score=0.1, threshold=0.2, pixel_threshold=0.5))
    with_mask = np.asarray(anomaly_panel(image, anomaly_map, score=0.1, threshold=0.2, pixel_threshold=0.5,
                                         ground_truth=empty_mask))
    layout = overlay_layout((400, 400), 1)
    titles = slice(layout.header_height, layout.header_height + layout.title_height)
    first, rest = slice(0, layout.panel[0]), slice(layout.panel[0], None)
    assert not np.array_equal(without[titles, first], with_mask[titles, first])
    assert np.array_equal(without[titles, rest], with_mask[titles, rest])
    below = slice(layout.header_height + layout.title_height, None)
    assert np.array_equal(without[below], with_mask[below])
