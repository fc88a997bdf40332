"""The app's sensitivity slider moves the threshold slider by the one mapping (model.decisions)."""

from __future__ import annotations

import pytest

from anomclip_hf.app.layout import PageHandlers
from anomclip_hf.app.results import ScoredSet
from anomclip_hf.app.workspace import Workspace
from anomclip_hf.model.decisions import threshold_for_sensitivity


@pytest.mark.parametrize("sensitivity", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_sensitivity_sets_the_threshold_slider(tmp_path, sensitivity):
    handlers = PageHandlers(Workspace(work_dir=str(tmp_path)))
    scored = ScoredSet(category="widget", stored_threshold=0.3, pixel_threshold=None)
    update = handlers.on_sensitivity(scored, sensitivity)
    assert update["value"] == pytest.approx(min(threshold_for_sensitivity(sensitivity, 0.3), 1.0))
    if sensitivity == 0.5:
        assert update["value"] == 0.3


def test_without_a_stored_threshold_the_slider_stays(tmp_path):
    handlers = PageHandlers(Workspace(work_dir=str(tmp_path)))
    update = handlers.on_sensitivity(ScoredSet(category="widget", stored_threshold=None, pixel_threshold=None), 0.8)
    assert "value" not in update
    assert "value" not in handlers.on_sensitivity(None, 0.8)  # nothing scored, no base loaded
