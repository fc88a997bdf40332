"""memory_search="auto" takes the bf16 shortlist only where it measured faster than the exact search; the
scores are the exact ones either way."""

from __future__ import annotations

import time

import pytest
import torch

from anomclip_hf.memory import search
from anomclip_hf.model import scoring
from anomclip_hf.model.scoring import memory_patch_scores


def _unit(rows, width, seed):
    return torch.nn.functional.normalize(torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.fixture
def bf16_machine(monkeypatch):
    monkeypatch.setattr(scoring, "native_bf16", lambda device: True)
    monkeypatch.setattr(search, "_MEASURED_FASTER", {})


def _counted(monkeypatch, clock, name, delay):
    """Count the calls of search.`name`; each advances the fake clock by `delay` seconds (nothing else does):
    the measured times are exactly these, whatever the machine's load."""
    calls = []
    original = getattr(search, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        clock[0] += delay
        return original(*args, **kwargs)

    monkeypatch.setattr(search, name, wrapper)
    return calls


@pytest.mark.parametrize("slower", ["shortlisted_nearest", "exact_nearest"])
def test_auto_takes_what_measured_faster(bf16_machine, monkeypatch, slower):
    rows = _unit(search.SHORTLIST_MIN_ROWS + 100, 64, 2)
    # queries near a bank row each: one clear nearest neighbour, so the shortlist never falls back to the exact search
    near = rows[:450] + 0.01 * _unit(450, 64, 1)
    features, bank = [torch.nn.functional.normalize(near, dim=1).reshape(2, 225, 64)], [rows]
    expected = memory_patch_scores(features, bank, search="exact")
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    shortlisted = _counted(monkeypatch, clock, "shortlisted_nearest", 2.0 if slower == "shortlisted_nearest" else 1.0)
    exact = _counted(monkeypatch, clock, "exact_nearest", 2.0 if slower == "exact_nearest" else 1.0)
    first = memory_patch_scores(features, bank, search="auto")
    rounds = search.MEASURE_ROUNDS  # each timed that often, then the faster one ran once more
    assert (len(shortlisted), len(exact)) == ((rounds + 1, rounds) if slower == "exact_nearest" else (rounds, rounds + 1))
    assert len(search._MEASURED_FASTER) == 1
    shortlisted.clear(), exact.clear()
    second = memory_patch_scores(features, bank, search="auto")  # decided: nothing is timed again
    assert (len(shortlisted), len(exact)) == ((1, 0) if slower == "exact_nearest" else (0, 1))
    assert torch.allclose(first, expected, atol=1e-6) and torch.allclose(second, expected, atol=1e-6)


def test_small_banks_and_machines_without_bf16_are_not_measured(monkeypatch):
    monkeypatch.setattr(search, "_MEASURED_FASTER", {})
    features = [_unit(225, 32, 1).reshape(1, 225, 32)]
    memory_patch_scores(features, [_unit(500, 32, 2)], search="auto")  # below SHORTLIST_MIN_ROWS
    monkeypatch.setattr(scoring, "native_bf16", lambda device: False)
    memory_patch_scores(features, [_unit(search.SHORTLIST_MIN_ROWS, 32, 3)], search="auto")
    assert search._MEASURED_FASTER == {}
