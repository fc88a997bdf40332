"""Memory settings (--memory-size, --coreset-ratio) and reference features the memory refuses, before anything changes."""

from __future__ import annotations

import pytest
import torch

from adapter_setup import PATCHES, WIDTH, fake_features, fresh_model


@pytest.mark.parametrize("settings, fragment", [
    ({"memory_size": 0}, "memory_size=0; expected a positive number of patch rows"),
    ({"memory_size": 3 * PATCHES + 1}, "memory_size=676 is larger than the memory bank: its 675 rows"),
    ({"coreset_ratio": -0.5}, "coreset_ratio=-0.5; expected a fraction of the bank's rows to keep, greater than 0"),
    ({"coreset_ratio": float("nan")}, "coreset_ratio=nan"),
    ({"memory_size": 10, "coreset_ratio": 0.5}, "give one of them"),
])
def test_bad_memory_settings_are_refused_before_anything_is_added(tiny_model, settings, fragment):
    references = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        tiny_model.add_category("widget", reference_images=references, **settings)
    assert tiny_model.categories == [] and tiny_model.category_bank.prompt_tokens.adapter_names == []


def test_reference_features_with_nan_rows_are_refused_by_the_coreset(tiny_model):
    features = fake_features(3)
    features.memory_features[1] = torch.randn(3, PATCHES, WIDTH)
    features.memory_features[0] = torch.randn(3, PATCHES, WIDTH).index_fill(1, torch.tensor([7]), float("nan"))
    with pytest.raises(ValueError, match=r"row 7 of the memory bank holds NaN or infinite values \(3 such rows"):
        tiny_model.add_category("widget", reference_images=features, memory_size=100)
    assert tiny_model.categories == []


@pytest.mark.parametrize("flag, value, fragment", [
    ("--memory-size", "0", "argument --memory-size: expected an integer >= 1, got '0'"),
    ("--coreset-ratio", "-0.1", "argument --coreset-ratio: expected a number greater than 0 and at most 1, got '-0.1'"),
    ("--coreset-ratio", "1.5", "expected a number greater than 0 and at most 1, got '1.5'"),
])
def test_fit_refuses_bad_memory_flags(flag, value, fragment, capsys, tmp_path):
    from anomclip_hf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--base", "b", "--references", str(tmp_path), "--category", "c", "--output", str(tmp_path / "o"),
              flag, value])
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_a_failed_fit_leaves_no_half_written_adapter(tiny_clip, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from anomclip_hf.training import TrainingConfig, train_category

    good = tmp_path / "refs" / "widget"
    good.mkdir(parents=True)
    generator = torch.Generator().manual_seed(4)
    for index in range(40):  # more than one batch: streamed from the files
        pixels = (torch.rand(30, 30, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(good / f"{index:03d}.png")
    config = TrainingConfig(stage1_epochs=1, stage2_epochs=1, trackers="none", progress_bar=False)
    model = fresh_model(tiny_clip)
    with pytest.raises(ValueError, match="memory_size=9001 is larger than the memory bank: its 9000 rows"):
        train_category(model, "widget", str(tmp_path / "job"), dataset="folder", data_root=str(tmp_path / "refs"),
                       shots=40, config=config, memory_size=9001)
    assert not (tmp_path / "job" / "adapter").exists() and model.categories == []
    (good / "039.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="039.png"):
        train_category(model, "widget", str(tmp_path / "job"), dataset="folder", data_root=str(tmp_path / "refs"),
                       shots=40, config=config, memory_size=2000)
    assert not (tmp_path / "job" / "adapter").exists() and model.categories == []
    # a failure after the forwards (inside the coreset selection) leaves nothing either
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(good / "039.png")
    import anomclip_hf.model.memory_bank as memory_bank

    def interrupted(*args, **kwargs):
        raise RuntimeError("interrupted while selecting the coreset")

    monkeypatch.setattr(memory_bank, "select_coreset", interrupted)
    with pytest.raises(RuntimeError, match="interrupted while selecting"):
        train_category(model, "widget", str(tmp_path / "job"), dataset="folder", data_root=str(tmp_path / "refs"),
                       shots=40, config=config, memory_size=2000)
    assert not (tmp_path / "job" / "adapter").exists() and not (tmp_path / "job" / "summary.json").exists()
    assert model.categories == []


