"""--precision auto decides by measuring the loaded tower (fp32 vs bf16), cached per machine, torch build and
tower shape in a small JSON file; a corrupt cache is ignored; the decision is printed once."""

from __future__ import annotations

import json

import pytest
import torch

from anomclip_hf.model import precision as precision_module
from anomclip_hf.model import precision_probe
from anomclip_hf.model.precision import resolve_precision


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_probe, "_PRINTED", set())
    # a CPU whose flags offer bf16, so that auto has something to measure
    monkeypatch.setattr(precision_module, "bf16_support", lambda device: (True, "the CPU has AVX512_BF16 (test)"))
    return tmp_path / "cache" / precision_probe.CACHE_FILE


def fake_timer(monkeypatch, seconds: dict) -> list:
    calls = []

    def timer(model, repeats=precision_probe.PROBE_REPEATS):
        def measure():
            calls.append(1)
            return dict(seconds)
        return measure

    monkeypatch.setattr(precision_probe, "tower_timer", timer)
    return calls


def test_bf16_measured_slower_keeps_fp32(tiny_model, cache, monkeypatch, capsys):
    calls = fake_timer(monkeypatch, {"fp32": 0.100, "bf16": 0.150})
    choice = resolve_precision("auto", "cpu", tiny_model)
    assert (choice.precision, choice.autocast_dtype) == ("fp32", None)
    assert calls == [1]
    assert "100.0 ms in fp32" in choice.reason and "150.0 ms under bf16" in choice.reason
    stored = json.loads(cache.read_text())
    (key, entry), = stored.items()
    assert key == precision_probe.probe_key(tiny_model, torch.device("cpu"))
    assert torch.__version__ in key and precision_probe.cpu_model() in key
    assert entry["precision"] == "fp32" and entry["seconds"] == {"fp32": 0.100, "bf16": 0.150}
    assert capsys.readouterr().err.count("precision auto -> fp32") == 1


def test_bf16_measured_faster_runs_bf16_and_the_cache_serves_the_second_call(tiny_model, cache, monkeypatch, capsys):
    calls = fake_timer(monkeypatch, {"fp32": 0.100, "bf16": 0.040})
    assert resolve_precision("auto", "cpu", tiny_model).precision == "bf16"
    second = resolve_precision("auto", "cpu", tiny_model)
    assert second.precision == "bf16" and "cached" in second.reason
    assert calls == [1]  # measured once: the second call read the file
    assert capsys.readouterr().err.count("precision auto -> bf16") == 1  # printed once per process
    # a new process (nothing printed yet) still reads the cache, and prints the decision once
    monkeypatch.setattr(precision_probe, "_PRINTED", set())
    assert resolve_precision("auto", "cpu", tiny_model).precision == "bf16"
    assert calls == [1] and "cached" in capsys.readouterr().err


def test_a_tie_keeps_fp32():
    assert precision_probe.decide({"fp32": 0.100, "bf16": 0.099}) == "fp32"
    assert precision_probe.decide({"fp32": 0.100, "bf16": 0.090}) == "bf16"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": 3}', ""])
def test_a_corrupt_cache_is_ignored_and_replaced(tiny_model, cache, monkeypatch, content):
    cache.parent.mkdir(parents=True)
    key = precision_probe.probe_key(tiny_model, torch.device("cpu"))
    cache.write_text(content if content != '{"k": 3}' else json.dumps({key: {"precision": "int4"}}))
    calls = fake_timer(monkeypatch, {"fp32": 0.2, "bf16": 0.1})
    assert resolve_precision("auto", "cpu", tiny_model).precision == "bf16"
    assert calls == [1]
    assert json.loads(cache.read_text())[key]["precision"] == "bf16"


def test_without_bf16_instructions_nothing_is_measured(tiny_model, cache, monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_support", lambda device: (False, "no AVX512_BF16 (test)"))
    calls = fake_timer(monkeypatch, {"fp32": 0.2, "bf16": 0.1})
    assert resolve_precision("auto", "cpu", tiny_model).precision == "fp32"
    assert calls == [] and not cache.exists()


def test_the_real_probe_times_both_precisions(tiny_model, cache):
    seconds = precision_probe.tower_timer(tiny_model, repeats=1)()
    assert set(seconds) == {"fp32", "bf16"} and all(value > 0 for value in seconds.values())
    assert not torch.is_autocast_enabled("cpu")  # the probe leaves no autocast behind
