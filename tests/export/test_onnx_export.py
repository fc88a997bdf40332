"""anomclip export / predict --onnx / OnnxAnomalyDetector: the exported graph computes the PyTorch forward."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from inference_setup import save_trained_category

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import main
from anomclip_hf.export import OnnxAnomalyDetector, export_onnx
from anomclip_hf.export.onnx_export import OnnxExportError
from anomclip_hf.model.processing_anomclip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    preprocess_images,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4


def _image(seed: int, size=(30, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_clip):
    """A trained-looking category (memory of 3 references, learned prompt vectors moved off their start,
    leave-one-out thresholds) saved as base + adapter folders, then exported through the CLI."""
    root = tmp_path_factory.mktemp("onnx")
    save_trained_category(root, tiny_clip)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for seed in range(5):
        _image(10 + seed, (40 + seed, 36)).save(images / ("sub" if seed % 2 else "") / f"{seed:03d}.png")
    (images / "broken.png").write_bytes(b"not a png")
    (images / "notes.txt").write_text("not an image")
    assert main(["export", "--base", str(root / "base"), "--category", str(root / "adapter"),
                 "--output", str(root / "widget.onnx")]) == 0
    loaded = AnomCLIPModel.from_base(str(root / "base"))
    loaded.load_category(str(root / "adapter"))
    return {"root": root, "onnx": root / "widget.onnx", "model": loaded, "images": images}


def _torch_scores(model, pixel_values: np.ndarray):
    with torch.no_grad():
        out = model(torch.from_numpy(pixel_values))
    return out.image_scores.numpy(), out.anomaly_maps.numpy()


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_equals_the_pytorch_forward(exported, batch):
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    pixel_values = np.random.default_rng(batch).standard_normal((batch, 3, 30, 30)).astype(np.float32)
    scores, maps = session.run(["image_scores", "anomaly_maps"], {"pixel_values": pixel_values})
    expected_scores, expected_maps = _torch_scores(exported["model"], pixel_values)
    assert scores.shape == (batch,) and maps.shape == (batch, 30, 30)
    assert np.abs(scores - expected_scores).max() < TOLERANCE
    assert np.abs(maps - expected_maps).max() < TOLERANCE
    assert expected_maps.max() > 0.01  # a real map, not zeros equal to zeros


def test_graph_passes_the_checker_with_a_dynamic_batch_and_a_sidecar(exported):
    onnx.checker.check_model(str(exported["onnx"]), full_check=True)
    graph = onnx.load(str(exported["onnx"])).graph
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "pixel_values" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 30, 30]
    assert [o.name for o in graph.output] == ["image_scores", "anomaly_maps"]
    # no text tower in the graph: the prototypes are baked in (the text tower's token table is 514 x 32)
    assert not any(list(init.dims) == [514, 32] for init in graph.initializer)
    sidecar = json.loads((exported["root"] / "widget.onnx.json").read_text())
    record = json.loads((exported["root"] / "adapter" / "category.json").read_text())
    assert sidecar["decision_threshold"] == record["decision_threshold"] is not None
    assert sidecar["pixel_threshold"] == record["pixel_threshold"] is not None
    assert sidecar["category"]["category"] == "widget" and sidecar["category"]["shots"] == 3
    assert sidecar["base_model"]["fingerprint"] == record["base_model"]["fingerprint"]
    assert sidecar["preprocessing"] == {"image_size": 30, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD),
                                        "resample": "bicubic", "color": "RGB", "scale": 1 / 255, "layout": "NCHW"}
    assert sidecar["precision"] == "float32" and sidecar["check"]["max_abs_score_diff"] < TOLERANCE


def test_detector_scores_images_as_the_model_does(exported):
    detector = OnnxAnomalyDetector(exported["onnx"])
    files = sorted(str(p) for p in exported["images"].rglob("0*.png"))
    pictures = [Image.open(f) for f in files[:2]]
    inputs = [files[0], pictures[1], np.asarray(_image(99, (20, 50)).convert("L"))]  # a path, PIL, a grey array
    result = detector(inputs, batch_size=2)
    with torch.no_grad():
        out = exported["model"](preprocess_images(inputs, 30))
    assert np.abs(result.image_scores - out.image_scores.numpy()).max() < TOLERANCE
    assert np.abs(result.anomaly_maps - out.anomaly_maps.numpy()).max() < TOLERANCE
    threshold = exported["model"].get_category().metadata["decision_threshold"]
    assert detector.threshold == threshold
    assert result.decisions == ["anomalous" if s >= threshold else "normal" for s in out.image_scores.tolist()]
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 30, 30\)"):
        detector.run(np.zeros((1, 3, 32, 32), np.float32))


def test_detector_refuses_what_the_graph_would_score_as_nonsense(exported, monkeypatch):
    # The graph cannot check its inputs or values (data-dependent). Far out of range, ONNX Runtime
    # returns finite nonsense: the same score for every image, which read as a valid "normal".
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(0).standard_normal((2, 3, 30, 30)).astype(np.float32)
    scores, _ = session.run(["image_scores", "anomaly_maps"], {"pixel_values": noise * np.float32(1e30)})
    assert scores[0] == scores[1]  # what used to come back
    detector = OnnxAnomalyDetector(exported["onnx"])
    for scale in (1e30, 200.0):  # overflowing values, raw 0-255 pixels
        with pytest.raises(ValueError, match=r"pixel_values reach [\d.e+]+; expected preprocessed images .* refused "
                                             r"beyond \+-34\.3"):
            detector.run(np.abs(noise) * np.float32(scale))
    # NaN out of the graph (its fusion now keeps NaN as NaN) is refused by name, never returned as a score
    outputs = detector.session.run(None, {"pixel_values": noise})
    monkeypatch.setattr(detector.session, "run", lambda *args: [outputs[0] * np.float32("nan"), outputs[1]])
    with pytest.raises(ValueError, match=r"the exported model scored images \[0, 1\] of the batch NaN or infinite"):
        detector.run(noise)
    with pytest.raises(ValueError, match=r"threshold=nan; expected a number greater than 0 and at most 2"):
        OnnxAnomalyDetector(exported["onnx"], threshold=float("nan"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_onnx_writes_the_files_of_the_pytorch_predict(exported, tmp_path, capsys):
    root, images = exported["root"], exported["images"]
    assert main(["predict", "--base", str(root / "base"), "--category", str(root / "adapter"), "--images", str(images),
                 "--output", str(tmp_path / "torch"), "--quiet", "--batch-size", "2", "--overlays", "all"]) == 0
    assert main(["predict", "--onnx", str(exported["onnx"]), "--images", str(images), "--output",
                 str(tmp_path / "onnx"), "--quiet", "--batch-size", "3", "--overlays", "all"]) == 0
    torch_rows, onnx_rows = _rows(tmp_path / "torch" / "scores.csv"), _rows(tmp_path / "onnx" / "scores.csv")
    assert len(onnx_rows) == 5 and [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    for ours, theirs in zip(onnx_rows, torch_rows):
        assert abs(float(ours["image_score"]) - float(theirs["image_score"])) <= TOLERANCE
        assert ours["decision"] == theirs["decision"] and ours["decision"] in ("anomalous", "normal")
    overlays = sorted(p.relative_to(tmp_path / "onnx") for p in (tmp_path / "onnx").rglob("*.png"))
    assert overlays == sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*.png"))
    assert len(overlays) == 5 and Path("overlays/sub/001.png") in overlays
    assert _rows(tmp_path / "onnx" / "errors.csv") == _rows(tmp_path / "torch" / "errors.csv")
    assert {Path(r["path"]).name for r in _rows(tmp_path / "onnx" / "errors.csv")} == {"broken.png", "notes.txt"}


BLOCKER = """
import sys
# torch, transformers (and the other dependencies the runtime must not need) look uninstalled: importing them
# fails and importlib.util.find_spec finds nothing.
for name in ("torch", "transformers", "scipy", "tqdm", "datasets", "huggingface_hub"):
    sys.modules[name] = None
"""


def test_runtime_runs_where_torch_and_transformers_cannot_be_imported(exported, tmp_path):
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    files = sorted(str(p) for p in exported["images"].rglob("0*.png"))
    script = textwrap.dedent(f"""
        import json, sys
        for name in ("torch", "transformers"):
            try:
                __import__(name)
                raise SystemExit(name + " was importable")
            except ImportError:
                pass
        from anomclip_hf.export import OnnxAnomalyDetector
        result = OnnxAnomalyDetector({str(exported["onnx"])!r})({files!r})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m])
        print(json.dumps({{"scores": result.image_scores.tolist(), "decisions": result.decisions,
                           "map_sum": float(result.anomaly_maps.sum()), "loaded": loaded}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO_ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = json.loads(done.stdout.strip().splitlines()[-1])
    assert reported["loaded"] == []
    with torch.no_grad():
        out = exported["model"](preprocess_images(files, 30))
    assert np.abs(np.array(reported["scores"]) - out.image_scores.numpy()).max() < TOLERANCE
    assert abs(reported["map_sum"] - float(out.anomaly_maps.sum())) < TOLERANCE * out.anomaly_maps.numel()


def test_export_refuses_a_category_without_memory_and_inconsistent_options(tiny_model, tmp_path, capsys,
                                                                            monkeypatch):
    tiny_model.add_category("text_only")
    with pytest.raises(OnnxExportError, match="'text_only' has no memory bank"):
        export_onnx(tiny_model, str(tmp_path / "m.onnx"))
    tiny_model.add_category("widget", reference_images=[_image(0)])
    for options, message in (({"opset": 17}, "opset=17"), ({"output_size": -4}, "output_size=-4"),
                             ({"quantize": "int4"}, "quantize='int4'"),
                             ({"fp16": True, "quantize": "int8"}, "exclusive")):
        with pytest.raises(OnnxExportError, match=message):
            export_onnx(tiny_model, str(tmp_path / "m.onnx"), **options)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ImportError, match=r"onnxscript is not installed.*anomclip-hf\[onnx\]"):
        export_onnx(tiny_model, str(tmp_path / "m.onnx"))
    monkeypatch.undo()
    assert not (tmp_path / "m.onnx").exists()
    # the command line: one line and exit 2
    tiny_model.save_pretrained(tmp_path / "base")
    tiny_model.save_category(str(tmp_path / "text_only"), "text_only")
    code = main(["export", "--base", str(tmp_path / "base"), "--category", str(tmp_path / "text_only"),
                 "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()  # (after the progress bars of loading the base)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("anomclip export: error: category 'text_only' has no memory bank")
    assert main(["predict", "--images", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert main(["predict", "--onnx", "m.onnx", "--base", "b", "--images", str(tmp_path), "--output", "o"]) == 2
    assert "drop --base" in capsys.readouterr().err


def test_int8_and_fp16_exports_stay_close_to_float32(exported, tmp_path):
    model = exported["model"]
    pixel_values = np.random.default_rng(5).standard_normal((3, 3, 30, 30)).astype(np.float32)
    expected_scores, expected_maps = _torch_scores(model, pixel_values)
    for name, options, tolerance in (("int8", {"quantize": "int8"}, 0.05), ("fp16", {"fp16": True}, 0.01)):
        path = str(tmp_path / f"{name}.onnx")
        result = export_onnx(model, path, **options)
        types = {init.data_type for init in onnx.load(path).graph.initializer}
        assert (onnx.TensorProto.INT8 if name == "int8" else onnx.TensorProto.FLOAT16) in types
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        scores, maps = session.run(None, {"pixel_values": pixel_values})
        assert np.abs(scores - expected_scores).max() < tolerance
        assert np.abs(maps - expected_maps).max() < tolerance
        sidecar = json.loads(Path(path + ".json").read_text())
        assert sidecar["precision"] == ("int8" if name == "int8" else "float16")
        assert sidecar["check"] == result.check and result.check["max_abs_score_diff"] < tolerance
        assert not os.path.exists(path + ".float.onnx")


def test_sidecar_sensitivity_sets_the_runtime_threshold(exported, tmp_path):
    import json
    import shutil

    from anomclip_hf.export.runtime import OnnxAnomalyDetector

    settings = json.loads((exported["root"] / "widget.onnx.json").read_text())
    stored = settings["decision_threshold"]
    assert settings["sensitivity"] == 0.5
    assert OnnxAnomalyDetector(str(exported["onnx"])).threshold == stored
    assert OnnxAnomalyDetector(str(exported["onnx"]), sensitivity=0.75).threshold == pytest.approx(stored / 2)
    assert OnnxAnomalyDetector(str(exported["onnx"]), threshold=0.01).threshold == 0.01
    copy = tmp_path / "widget.onnx"
    shutil.copy(exported["onnx"], copy)
    for value, expected in ((0.25, 1.5 * stored), (None, stored)):  # None: a sidecar written before the field
        edited = {**settings, "sensitivity": value} if value is not None else \
            {k: v for k, v in settings.items() if k != "sensitivity"}
        (tmp_path / "widget.onnx.json").write_text(json.dumps(edited))
        assert OnnxAnomalyDetector(str(copy)).threshold == pytest.approx(expected)
    (tmp_path / "widget.onnx.json").write_text(json.dumps({**settings, "sensitivity": 7}))
    with pytest.raises(ValueError, match="sensitivity=7; expected a number from 0 to 1"):
        OnnxAnomalyDetector(str(copy))
