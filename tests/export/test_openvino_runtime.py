"""OpenVinoAnomalyDetector: the exported graph on OpenVINO scores as the PyTorch forward does (within 1e-4),
float32 unless told otherwise, torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference_setup import save_trained_category

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import main
from anomclip_hf.export import OnnxAnomalyDetector
from anomclip_hf.model.processing_anomclip import preprocess_images

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")
from anomclip_hf.export import OpenVinoAnomalyDetector  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4


def _image(seed: int, size=(30, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("openvino")
    save_trained_category(root, tiny_clip)
    assert main(["export", "--base", str(root / "base"), "--category", str(root / "adapter"),
                 "--output", str(root / "widget.onnx")]) == 0
    loaded = AnomCLIPModel.from_base(str(root / "base"))
    loaded.load_category(str(root / "adapter"))
    files = []
    for seed in range(5):
        files.append(str(root / f"{seed:03d}.png"))
        _image(10 + seed, (40 + seed, 36)).save(files[-1])
    return {"root": root, "onnx": root / "widget.onnx", "model": loaded, "files": files}


@pytest.mark.parametrize("batch", [1, 5])
def test_openvino_equals_the_pytorch_forward(exported, batch):
    detector = OpenVinoAnomalyDetector(exported["onnx"])
    pixel_values = np.random.default_rng(batch).standard_normal((batch, 3, 30, 30)).astype(np.float32)
    scores, maps = detector.run(pixel_values)
    with torch.no_grad():
        out = exported["model"](torch.from_numpy(pixel_values))
    assert scores.shape == (batch,) and maps.shape == (batch, 30, 30)
    assert np.abs(scores - out.image_scores.numpy()).max() < TOLERANCE
    assert np.abs(maps - out.anomaly_maps.numpy()).max() < TOLERANCE
    assert out.anomaly_maps.max() > 0.01


def test_images_decisions_and_settings_as_onnx_runtime(exported):
    detector = OpenVinoAnomalyDetector(exported["onnx"])
    # float32 asked for explicitly: OpenVINO would pick bf16 by itself on CPUs with bf16 instructions
    assert str(detector.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    result = detector(exported["files"], batch_size=2)
    reference = OnnxAnomalyDetector(exported["onnx"])(exported["files"], batch_size=3)
    with torch.no_grad():
        out = exported["model"](preprocess_images(exported["files"], 30))
    assert np.abs(result.image_scores - out.image_scores.numpy()).max() < TOLERANCE
    assert np.abs(result.anomaly_maps - reference.anomaly_maps).max() < TOLERANCE
    assert detector.threshold == OnnxAnomalyDetector(exported["onnx"]).threshold is not None
    assert result.decisions == ["anomalous" if s >= detector.threshold else "normal" for s in result.image_scores]
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 30, 30\)"):
        detector.run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="precision='int8'"):
        OpenVinoAnomalyDetector(exported["onnx"], precision="int8")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OpenVinoAnomalyDetector(exported["root"] / "missing.onnx")


BLOCKER = """
import sys
for name in ("torch", "transformers", "onnxruntime"):
    sys.modules[name] = None
"""


def test_openvino_runs_where_torch_cannot_be_imported(exported, tmp_path):
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    script = textwrap.dedent(f"""
        import json, sys
        from anomclip_hf.export import OpenVinoAnomalyDetector
        result = OpenVinoAnomalyDetector({str(exported["onnx"])!r})({exported["files"]!r})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnxruntime")
                        and sys.modules[m])
        print(json.dumps({{"scores": result.image_scores.tolist(), "loaded": loaded}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO_ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = json.loads(done.stdout.strip().splitlines()[-1])
    assert reported["loaded"] == []
    with torch.no_grad():
        expected = exported["model"](preprocess_images(exported["files"], 30)).image_scores.numpy()
    assert np.abs(np.array(reported["scores"]) - expected).max() < TOLERANCE


def test_predict_onnx_runtime_openvino_writes_the_scores_of_onnx_runtime(exported, tmp_path, capsys):
    import csv

    images = exported["root"] / "images"
    images.mkdir(exist_ok=True)
    for path in exported["files"]:
        Image.open(path).save(images / Path(path).name)
    rows = {}
    for runtime in ("onnxruntime", "openvino"):
        assert main(["predict", "--onnx", str(exported["onnx"]), "--runtime", runtime, "--images", str(images),
                     "--output", str(tmp_path / runtime), "--quiet"]) == 0
        with open(tmp_path / runtime / "scores.csv", newline="") as handle:
            rows[runtime] = list(csv.DictReader(handle))
    assert len(rows["openvino"]) == 5
    assert [r["path"] for r in rows["openvino"]] == [r["path"] for r in rows["onnxruntime"]]
    for ours, theirs in zip(rows["openvino"], rows["onnxruntime"]):
        assert abs(float(ours["image_score"]) - float(theirs["image_score"])) <= TOLERANCE
        assert ours["decision"] == theirs["decision"]
    capsys.readouterr()
    # --runtime without --onnx is refused before anything loads
    assert main(["predict", "--base", "b", "--category", "c", "--runtime", "openvino", "--images", str(images),
                 "--output", str(tmp_path / "x")]) != 0
    assert "--runtime openvino runs an exported model: pass --onnx" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
