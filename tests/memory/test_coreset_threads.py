"""The coreset's greedy loop runs at one torch thread whatever the caller's setting (restored after), and selects
the same rows as before: the textbook greedy's, and the loop's own at the caller's thread count."""

from __future__ import annotations

import torch

from anomclip_hf.memory.coreset import GREEDY_THREADS, greedy_k_center, torch_threads


def _textbook_greedy(points: torch.Tensor, size: int, first: int) -> list[int]:
    points = points.double()
    kept = [first]
    nearest = torch.cdist(points, points[first: first + 1])[:, 0]
    while len(kept) < size:
        kept.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, torch.cdist(points, points[kept[-1]: kept[-1] + 1])[:, 0])
    return kept


def test_greedy_runs_single_threaded_and_restores_the_setting():
    points = torch.randn(2500, 24, generator=torch.Generator().manual_seed(3))
    seen = []
    original = torch.addmm

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    before = torch.get_num_threads()
    with torch_threads(2):
        torch.addmm = spy
        try:
            pinned = greedy_k_center(points, 150, seed=4, block_rows=256)
        finally:
            torch.addmm = original
        assert torch.get_num_threads() == 2  # the caller's setting is back
        unpinned = greedy_k_center(points, 150, seed=4, block_rows=256, threads=None)
    assert torch.get_num_threads() == before
    assert GREEDY_THREADS == 1 and seen and set(seen) == {1}  # every product of the loop ran at one thread
    assert pinned.tolist() == unpinned.tolist() == _textbook_greedy(points, 150, int(pinned[0]))


def test_torch_threads_restores_after_an_error():
    before = torch.get_num_threads()
    try:
        with torch_threads(1):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before
