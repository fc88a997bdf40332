"""Every long phase of a fit shows progress: off a terminal, one line per phase on stderr with its duration."""

from __future__ import annotations

import copy
import io
import re

import torch
from PIL import Image

from anomclip_hf import AnomCLIPModel
from anomclip_hf.io.progress import Phase
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer
from anomclip_hf.training import TrainingConfig
from anomclip_hf.training.job import train_category

LINE = re.compile(r"^fit: (?P<phase>.+?): (?P<count>\d+) (?P<unit>\w+) in (?P<seconds>\d+\.\d) s$")


def _references(folder, count):
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(4)
    for index in range(count):
        pixels = (torch.rand(30, 30, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")


def _fit(tiny_clip, tmp_path, capfd, **options):
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    config = TrainingConfig(stage1_epochs=2, stage2_epochs=1, trackers="none", **options.pop("config", {}))
    capfd.readouterr()
    summary = train_category(model, "widget", str(tmp_path / "job"), dataset="folder", data_root=str(tmp_path / "refs"),
                             shots=6, config=config, **options)
    return summary, capfd.readouterr().err  # stderr is a file here (not a terminal): the line form


def test_a_coreset_fit_prints_one_line_per_phase(tiny_clip, tmp_path, capfd):
    _references(tmp_path / "refs" / "widget", 6)
    summary, stderr = _fit(tiny_clip, tmp_path, capfd, memory_size=300)
    lines = [LINE.match(line) for line in stderr.splitlines() if line.startswith("fit: ")]
    assert all(lines), stderr
    phases = [(m["phase"], int(m["count"]), m["unit"]) for m in lines]
    # 6 references of 225 patches, 2 memory layers: a coreset and its radius per layer
    assert phases == [("references", 6, "img"), ("coreset", 300, "row"), ("coverage radius", 1350, "row"),
                      ("coreset", 300, "row"), ("coverage radius", 1350, "row"),
                      ("training folder/widget 6-shot seed 0", 3, "epoch"), ("thresholds", 6, "img")], stderr
    assert summary["decision_threshold"] is not None and "\r" not in stderr  # no bar redraws in a log


def test_an_exact_fit_and_quiet(tiny_clip, tmp_path, capfd):
    _references(tmp_path / "refs" / "widget", 6)
    _, stderr = _fit(tiny_clip, tmp_path, capfd)
    assert [m["phase"] for m in map(LINE.match, stderr.splitlines()) if m] == [
        "references", "training folder/widget 6-shot seed 0", "thresholds"], stderr
    _, stderr = _fit(tiny_clip, tmp_path, capfd, config={"progress_bar": False})
    assert "fit: " not in stderr


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_a_failed_phase_no_line():
    terminal = _Terminal()
    with Phase("coreset", 10, "row", stream=terminal) as bar:
        bar.update(10)
    assert "coreset" in terminal.getvalue() and "in " not in terminal.getvalue().split("coreset")[-1][:3]
    log = io.StringIO()
    try:
        with Phase("thresholds", 4, "img", stream=log) as bar:
            bar.update(1)
            raise RuntimeError("stopped")
    except RuntimeError:
        pass
    assert log.getvalue() == ""
    with Phase("thresholds", 4, "img", stream=log) as bar:
        bar.update(4)
    assert LINE.match(log.getvalue().strip())["count"] == "4"
