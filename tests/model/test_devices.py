"""--device / device=: a device this machine has, or one line naming the flag, the value and the devices there are."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import pipeline

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer


NO_GPU_HERE = "expected auto or one of the devices of this machine: cpu"


@pytest.fixture
def without_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device, message", [
    ("banana", f"--device banana: not a device name; {NO_GPU_HERE}"),
    ("cuda", f"--device cuda: no CUDA GPU is available on this machine; {NO_GPU_HERE}"),
    ("cuda:1", f"--device cuda:1: no CUDA GPU is available on this machine; {NO_GPU_HERE}"),
    ("mps", f"--device mps: Apple MPS is not available on this machine; {NO_GPU_HERE}"),
    ("meta", f"--device meta: not a device anomclip-hf computes on; {NO_GPU_HERE}"),
])
def test_cli_device_that_is_not_here_is_one_line_naming_the_flag(device, message, without_gpus, good_adapter,
                                                                 base_folder, tmp_path, capsys):
    from PIL import Image

    from anomclip_hf.cli import main

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (30, 30), (90, 120, 30)).save(images / "a.png")
    code = main(["predict", "--base", str(base_folder), "--category", str(good_adapter), "--images", str(images),
                 "--output", str(tmp_path / "out"), "--device", device, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"anomclip predict: error: {message}", err
    assert not (tmp_path / "out").exists()


def test_python_api_device_that_is_not_here_names_the_argument(without_gpus, tiny_clip, base_folder, loaded):
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    calls = {"from_clip": lambda device: AnomCLIPModel.from_clip(tiny_clip, tokenizer=tokenizer, device=device),
             "from_pretrained": lambda device: AnomCLIPModel.from_pretrained(str(base_folder), device=device),
             "from_base": lambda device: AnomCLIPModel.from_base(str(base_folder), device=device),
             "pipeline": lambda device: pipeline("image-anomaly-detection", model=loaded[0], device=device)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=re.escape(f"device='banana': not a device name; {NO_GPU_HERE}")):
            call("banana")
        with pytest.raises(ValueError, match=re.escape(f"device='cuda': no CUDA GPU is available on this machine; "
                                                       f"{NO_GPU_HERE}")):
            call("cuda")
        assert call("cpu").device.type == "cpu", name
    assert pipeline("image-anomaly-detection", model=loaded[0], device=-1).device.type == "cpu"  # transformers' CPU


def test_devices_listed_are_the_ones_present(monkeypatch):
    from anomclip_hf.model.devices import available_devices, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert available_devices() == ["cpu", "cuda", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=re.escape("--device cuda:2: this machine has 2 CUDA GPU(s); expected auto or "
                                                   "one of the devices of this machine: cpu, cuda, cuda:0, cuda:1")):
        resolve_device("cuda:2", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert available_devices() == ["cpu", "mps"] and resolve_device("auto") == torch.device("mps")
    with pytest.raises(ValueError, match=re.escape("device='cuda': no CUDA GPU is available on this machine; expected "
                                                   "auto or one of the devices of this machine: cpu, mps")):
        resolve_device("cuda")


