"""The engine interface: PyTorch and ONNX Runtime give the same scores and describe the same category; a new
runtime plugs in as the engines package says (a detector subclass, an engine subclass)."""

from __future__ import annotations

import numpy as np
import pytest
from inference_setup import random_image

from anomclip_hf.export.runtime import OnnxAnomalyDetector
from anomclip_hf.inference.engines import (
    ENGINES,
    Engine,
    ExportedModelEngine,
    OnnxRuntimeEngine,
    TorchEngine,
    exported_engine,
)
from anomclip_hf.inference.predictor import Predictor

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
    return [random_image(40 + seed, (30 + 7 * seed, 34)) for seed in range(5)]


def test_torch_and_onnx_runtime_engines_give_the_same_scores_and_maps(category, images):
    torch_engine = TorchEngine(category.model, "widget")
    onnx_engine = OnnxRuntimeEngine(str(category.onnx))
    torch_scores, torch_maps = torch_engine.score(torch_engine.preprocess(images))
    onnx_scores, onnx_maps = onnx_engine.score(onnx_engine.preprocess(images))
    assert torch_scores.shape == onnx_scores.shape == (5,) and torch_scores.dtype == onnx_scores.dtype == np.float32
    assert torch_maps.shape == onnx_maps.shape and torch_maps.ndim == 3
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(onnx_maps, torch_maps, atol=TOLERANCE, rtol=0)
    # the independent reference: the model's own forward on its own processor's pixels
    import torch

    with torch.no_grad():
        out = category.model(**{k: v for k, v in torch_engine.preprocess(images).items()})
    np.testing.assert_allclose(torch_scores, out.image_scores.numpy(), atol=1e-6, rtol=0)
    # the same numbers through the Predictor of each engine
    by_torch = Predictor.from_model(category.model).predict(images)
    by_onnx = Predictor.from_onnx(str(category.onnx)).predict(images)
    assert [p.score for p in by_onnx] == pytest.approx([p.score for p in by_torch], abs=TOLERANCE)
    assert [p.decision for p in by_onnx] == [p.decision for p in by_torch]


def test_both_engines_describe_the_same_category(category):
    torch_info = TorchEngine(category.model).description
    onnx_info = OnnxRuntimeEngine(str(category.onnx)).description
    state = category.model.get_category("widget")
    assert (torch_info.name, onnx_info.name) == ("torch", "onnxruntime")
    assert torch_info.category == onnx_info.category == "widget"
    assert torch_info.threshold == pytest.approx(state.metadata["decision_threshold"])
    assert onnx_info.threshold == pytest.approx(torch_info.threshold)
    assert onnx_info.pixel_threshold == pytest.approx(torch_info.pixel_threshold)
    assert torch_info.preprocessing.image_size == onnx_info.preprocessing.image_size == category.model.config.image_size
    assert torch_info.preprocessing.mean == pytest.approx(onnx_info.preprocessing.mean)
    assert torch_info.preprocessing.resample == onnx_info.preprocessing.resample
    assert torch_info.note == onnx_info.note


def test_the_predictor_takes_its_thresholds_and_note_from_the_engine(category):
    predictor = Predictor(OnnxRuntimeEngine(str(category.onnx)))
    assert predictor.category == "widget" and predictor.threshold == predictor.engine.description.threshold
    assert Predictor(OnnxRuntimeEngine(str(category.onnx)), threshold=0.25).threshold == 0.25
    with pytest.raises(ValueError, match="threshold=nan"):
        Predictor(OnnxRuntimeEngine(str(category.onnx)), threshold=float("nan"))


def test_the_engine_interface_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Engine()


def test_runtimes_are_named_and_an_unknown_one_is_refused(category):
    assert exported_engine("onnxruntime") is OnnxRuntimeEngine and set(ENGINES) >= {"onnxruntime"}
    with pytest.raises(ValueError, match=r"runtime 'tensorrt' is not known; expected one of \['onnxruntime'"):
        Predictor.from_onnx(str(category.onnx), runtime="tensorrt")


class CountingDetector(OnnxAnomalyDetector):
    """A runtime as the engines docstring says to add one: `_open_session` loads, `_infer` runs (here ONNX
    Runtime again, counting the images it ran, so the plumbing is what is tested)."""

    def _open_session(self, path, providers=None, session_options=None, seen=None):
        self.seen = []
        return super()._open_session(path)

    def _infer(self, feeds):
        self.seen.append(feeds["pixel_values"].shape[0])
        return super()._infer(feeds)


class CountingEngine(ExportedModelEngine):
    name_of_runtime = "counting"
    detector_class = CountingDetector


def test_a_new_runtime_plugs_in_with_a_detector_and_an_engine_subclass(category, images, monkeypatch):
    monkeypatch.setitem(ENGINES, "counting", "onnxruntime_engine:OnnxRuntimeEngine")  # the registry's shape
    engine = CountingEngine(str(category.onnx))
    predictor = Predictor(engine, batch_size=2)
    results = predictor.predict(images)
    assert engine.detector.seen == [2, 2, 1] and engine.description.name == "counting"
    reference = Predictor.from_onnx(str(category.onnx)).predict(images)
    assert [r.score for r in results] == pytest.approx([r.score for r in reference], abs=1e-7)
