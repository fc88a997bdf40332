"""An exported model's sidecar is untrusted: its schema, its graph's SHA-256 and the graph's category are
checked when it loads, and a sidecar out of range or not the one of its graph is refused, naming the field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from anomclip_hf.export import OnnxAnomalyDetector, export_onnx
from anomclip_hf.export.sidecar import GRAPH_CATEGORY_KEY, SidecarError, graph_digest

pytest.importorskip("onnxruntime")


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 30, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_clip):
    """widget.onnx and gadget.onnx (two categories of one tiny model, memory of 3 references each)."""
    import copy

    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

    root = tmp_path_factory.mktemp("sidecars")
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    for name, first in (("widget", 0), ("gadget", 20)):
        references = [_image(first + seed) for seed in range(3)]
        model.add_category(name, reference_images=references, seed=1)
        model.estimate_thresholds(references, category=name)
        export_onnx(model, str(root / f"{name}.onnx"), category=name)
    return root


def _copy(graphs, tmp_path, name: str = "widget", sidecar_of: str = None):
    """A copy of a graph and (by default) its own sidecar in tmp_path; returns (graph path, sidecar dict)."""
    target = tmp_path / "model.onnx"
    shutil.copyfile(graphs / f"{name}.onnx", target)
    sidecar = json.loads((graphs / f"{sidecar_of or name}.onnx.json").read_text())
    return target, sidecar


def _write(target, sidecar) -> None:
    (target.parent / (target.name + ".json")).write_text(json.dumps(sidecar))


def test_an_exported_graph_records_its_hash_and_category_and_loads(graphs):
    sidecar = json.loads((graphs / "widget.onnx.json").read_text())
    assert sidecar["graph_sha256"] == graph_digest((graphs / "widget.onnx").read_bytes())
    import onnx

    props = {entry.key: entry.value for entry in onnx.load(str(graphs / "widget.onnx")).metadata_props}
    assert props[GRAPH_CATEGORY_KEY] == "widget"
    detector = OnnxAnomalyDetector(str(graphs / "widget.onnx"))
    assert detector.category == "widget" and 0 < detector.threshold <= 0.5
    assert detector([_image(99)]).image_scores.shape == (1,)


@pytest.mark.parametrize("field, value, expected", [
    ("decision_threshold", float("nan"), "finite number greater than 0"),
    ("decision_threshold", -0.1, "finite number greater than 0"),
    ("decision_threshold", 0.0, "finite number greater than 0"),
    ("decision_threshold", 1e9, "at most 0.5, the highest score a category with the CLIP memory"),
    ("decision_threshold", 0.75, "at most 0.5"),  # in [0, 1], but no fused score reaches it
    ("decision_threshold", float("inf"), "finite number"),
    ("decision_threshold", "0.2", "finite number"),
    ("pixel_threshold", 2.0, "at most 0.5"),
    ("preprocessing.std", [0.0, 0.26, 0.27], "3 standard deviations from 0.01 to 1"),
    ("preprocessing.std", [100.0, 100.0, 100.0], "3 standard deviations from 0.01 to 1"),
    ("preprocessing.std", [0.26, 0.26], "3 standard deviations"),
    ("preprocessing.mean", [40.0, 0.45, 0.4], "3 means from 0 to 1"),
    ("preprocessing.mean", [-3.0, 0.45, 0.4], "3 means from 0 to 1"),
    ("preprocessing.image_size", -30, "an integer from 1 to 4096"),
    ("preprocessing.image_size", "30", "an integer from 1 to 4096"),
    ("preprocessing.image_size", True, "an integer from 1 to 4096"),
    ("preprocessing.resample", "magic", "one of"),
    ("output_size", 0, "an integer from 1 to 4096"),
    ("graph_sha256", "abc", "64 hex digits"),
    ("category", None, "the category record"),
])
def test_a_sidecar_out_of_its_schema_is_refused_naming_the_field(graphs, tmp_path, field, value, expected):
    target, sidecar = _copy(graphs, tmp_path)
    holder, key = (sidecar["preprocessing"], field.split(".")[1]) if "." in field else (sidecar, field)
    holder[key] = value
    _write(target, sidecar)
    with pytest.raises(SidecarError, match=rf"field '{field}' is .*; expected .*{expected}"):
        OnnxAnomalyDetector(str(target))


def test_a_version_1_sidecar_without_a_graph_hash_is_refused(graphs, tmp_path):
    target, sidecar = _copy(graphs, tmp_path)
    sidecar["format_version"] = 1
    del sidecar["graph_sha256"]
    _write(target, sidecar)
    with pytest.raises(SidecarError, match="format_version 1; .*version 2 .*export the category again"):
        OnnxAnomalyDetector(str(target))


def test_edited_graph_bytes_are_refused(graphs, tmp_path):
    target, sidecar = _copy(graphs, tmp_path)
    _write(target, sidecar)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of a weight
    target.write_bytes(bytes(data))
    with pytest.raises(SidecarError, match="not the graph .* was written for .*SHA-256"):
        OnnxAnomalyDetector(str(target))


def test_the_graph_of_one_category_with_the_sidecar_of_another_is_refused(graphs, tmp_path):
    target, sidecar = _copy(graphs, tmp_path, name="widget", sidecar_of="gadget")
    _write(target, sidecar)
    with pytest.raises(SidecarError, match="SHA-256"):
        OnnxAnomalyDetector(str(target))
    # Even with the hash made to match (a hand-edited sidecar), the graph's own metadata names its category.
    sidecar["graph_sha256"] = graph_digest(target.read_bytes())
    _write(target, sidecar)
    with pytest.raises(SidecarError, match="a graph of category 'widget' but its sidecar describes category 'gadget'"):
        OnnxAnomalyDetector(str(target))
