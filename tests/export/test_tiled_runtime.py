"""A tiled category exported to ONNX: the graph scores a batch of tiles, the torch-free runtime cuts and stitches
with numpy (`io.tiling`), and its scores and maps equal the PyTorch model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomclip_hf import AnomCLIPModel
from anomclip_hf.data.synthetic_images import render_highres_sample
from anomclip_hf.export import OnnxAnomalyDetector, export_onnx
from anomclip_hf.io.tiling import TilingSpec
from anomclip_hf.model import tiling as model_tiling
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

TOLERANCE = 1e-4
SPEC = TilingSpec(60, 0.25)


@pytest.fixture(scope="module")
def tiled_export(tmp_path_factory, tiny_clip):
    """A tiled category (2 references of 150 x 210 px, learned-looking prompts, thresholds), exported."""
    root = tmp_path_factory.mktemp("tiled_onnx")
    model = AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    references = [render_highres_sample("sheet", f"r{i}", 210, 0).image[:150] for i in range(2)]
    tiles = model_tiling.encode_tiled_references(model, references, SPEC)
    model_tiling.add_tiled_category(model, "sheet", tiles, SPEC, learned_prompts=True, seed=3)
    with torch.no_grad():
        vectors = model.prompt_parameters()[0]
        vectors.add_(0.05 * torch.randn(vectors.shape, generator=torch.Generator().manual_seed(1)))
    model.clear_prototype_cache()
    model_tiling.estimate_tiled_thresholds(model, tiles, "sheet")
    exported = export_onnx(model, str(root / "sheet.onnx"), category="sheet")
    return model, OnnxAnomalyDetector(exported.path), exported


def test_the_graph_scores_tiles_and_the_sidecar_says_how_to_stitch(tiled_export):
    model, detector, exported = tiled_export
    sidecar = json.loads(open(exported.sidecar).read())
    assert set(sidecar["outputs"]) == {"patch_scores", "memory_patch_scores", "text_image_scores"}
    assert sidecar["tiling"]["tile"] == 60 and sidecar["tiling"]["overlap"] == 0.25
    assert sidecar["tiling"]["tower_size"] == 30 and sidecar["tiling"]["patch_size"] == 2
    assert exported.check["max_abs_map_diff"] < TOLERANCE and exported.check["max_abs_score_diff"] < TOLERANCE
    pixels = np.random.default_rng(0).normal(0, 1, (7, 3, 30, 30)).astype(np.float32)  # any batch of tiles
    patch, memory, text = detector.run_tiles(pixels)
    assert patch.shape == (7, 225) and memory.shape == (7, 225) and text.shape == (7,)


@pytest.mark.parametrize("height, width", [(150, 210), (333, 150), (45, 50)])  # the last: one whole image
def test_the_numpy_runtime_equals_pytorch(tiled_export, height, width):
    model, detector, _ = tiled_export
    sample = render_highres_sample("sheet", f"t{height}", max(height, width), 2, (3, 6)).image[:height, :width]
    expected = model_tiling.score_tiled_image(model, sample, SPEC, "sheet")
    got = detector.score_tiled_image(sample)
    assert got.anomaly_map.shape == (height, width) == expected.anomaly_map.shape
    assert abs(got.image_score - expected.image_score) < TOLERANCE
    np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, atol=TOLERANCE, rtol=0)
    prediction = detector.predict([sample, sample])
    np.testing.assert_allclose(prediction.image_scores, expected.image_score, atol=TOLERANCE)
    assert prediction.decisions[0] in ("normal", "anomalous")
