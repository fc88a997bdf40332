"""The Predictor: every input isolated (decode, preprocess, engine, non-finite scores), the pipeline of
`anomclip predict` (overlays all / anomalous / none give the same scores), one Predictor per pipeline."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from inference_setup import random_image, write_bad_inputs
from PIL import Image

from anomclip_hf.cli.main import main
from anomclip_hf.inference.engines import Engine
from anomclip_hf.inference.inputs import decode
from anomclip_hf.inference.predictor import NOT_FINITE, Predictor, predict_folder
from anomclip_hf.inference.writers import (
    ERRORS_FILE,
    MANIFEST_FILE,
    OVERLAY_DIR,
    SCORES_FILE,
)
from anomclip_hf.model.decisions import decision


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def scores_by_name(output: Path, root: Path) -> dict[str, list[str]]:
    """scores.csv rows keyed by the image's path below `root` (two runs over two folders compare)."""
    return {os.path.relpath(row[0], root): row[1:] for row in read_csv(output / SCORES_FILE)[1:]}


def errors_by_name(output: Path) -> dict[str, str]:
    if not (output / ERRORS_FILE).exists():
        return {}
    return {os.path.basename(row[0]): row[1] for row in read_csv(output / ERRORS_FILE)[1:]}


def predict_command(category, images: Path, output: Path, *extra: str, onnx: bool = False) -> int:
    model = ["--onnx", str(category.onnx)] if onnx else ["--base", str(category.base), "--category",
                                                          str(category.adapter)]
    return main(["predict", *model, "--images", str(images), "--output", str(output), "--batch-size", "3",
                 "--quiet", *extra])


# ------------------------------------------------------------------------------------- isolation per input
@pytest.mark.parametrize("onnx", [False, True], ids=["torch", "onnx"])
def test_bad_files_are_error_rows_and_leave_the_good_scores_unchanged(category, tmp_path, onnx):
    mixed = tmp_path / "mixed"
    shutil.copytree(category.good, mixed)
    bad = write_bad_inputs(mixed / "sub")  # among the good ones, so they fall inside batches of 3
    assert predict_command(category, category.good, tmp_path / "clean", "--overlays", "none", onnx=onnx) == 0
    assert predict_command(category, mixed, tmp_path / "mixed_out", "--overlays", "none", onnx=onnx) == 0
    clean = scores_by_name(tmp_path / "clean", category.good)
    assert len(clean) == 7 and not (tmp_path / "clean" / ERRORS_FILE).exists()
    scored = scores_by_name(tmp_path / "mixed_out", mixed)
    assert {name: scored[name] for name in clean} == clean  # the same rows, to the last digit
    # a PPM named .png still decodes until the decoder's allow-list refuses it (see the xfail below)
    assert set(scored) - set(clean) <= {os.path.join("sub", "ppm_bytes.png")}
    errors = errors_by_name(tmp_path / "mixed_out")
    assert set(bad) - {"ppm_bytes.png"} == {"corrupt.tif", "truncated.png", "empty.png", "text_bomb.png"}
    for name in set(bad) - {"ppm_bytes.png"}:
        assert name in errors and name in errors[name], (name, errors)  # each row names its file


@pytest.mark.xfail(strict=False, reason="refusing a PPM named .png is the decoder's format allow-list (io/)")
def test_ppm_bytes_named_png_are_an_error_row(category, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(category.good, folder)
    write_bad_inputs(folder)
    predict_folder(category.model, str(folder), str(tmp_path / "out"), progress=False, overlays="none")
    assert "ppm_bytes.png" in errors_by_name(tmp_path / "out")


class FlakyEngine(Engine):
    """The torch engine, except that a batch holding a red-cornered image fails as a whole, and a
    blue-cornered image scores NaN: what a runtime does with an input it cannot handle."""

    def __init__(self, inner: Engine):
        self.inner, self.batches = inner, []

    @property
    def description(self):
        return self.inner.description

    def preprocess(self, images):
        self.batches.append(len(images))
        marks = [image.getpixel((0, 0)) for image in images]
        return marks, self.inner.preprocess(images)

    def score(self, pixel_batch):
        marks, pixels = pixel_batch
        if (255, 0, 0) in marks and len(marks) > 1:
            raise RuntimeError("the runtime failed on this batch")
        if (255, 0, 0) in marks:
            raise RuntimeError("the runtime cannot score this image")
        scores, maps = self.inner.score(pixels)
        for offset, mark in enumerate(marks):
            if mark == (0, 0, 255):
                scores[offset] = np.nan
        return scores, maps


def marked(seed: int, colour) -> Image.Image:
    image = random_image(seed, (34, 30))
    image.putpixel((0, 0), colour)
    return image


def test_a_batch_that_fails_in_the_engine_is_scored_again_input_by_input(category):
    inner = Predictor.from_model(category.model).engine
    flaky = Predictor(FlakyEngine(inner), batch_size=4)
    items = [marked(1, (0, 1, 2)), marked(2, (255, 0, 0)), marked(3, (3, 4, 5)), marked(4, (0, 0, 255)),
             marked(5, (6, 7, 8)), marked(6, (9, 9, 9))]
    results = flaky.predict(items)
    assert [r.index for r in results] == list(range(6))
    assert results[1].error == "scoring failed: the runtime cannot score this image" and results[1].score is None
    assert results[3].error == NOT_FINITE and results[3].score is None
    for index in (0, 2, 4, 5):  # the innocent inputs, each as the engine scores it alone
        alone, _ = inner.score_images([items[index]])
        assert results[index].error is None
        assert results[index].score == pytest.approx(float(alone[0]), abs=1e-6)
    # the first batch of 4 failed and was retried one by one; the last batch of 2 went through whole
    assert flaky.engine.batches == [4, 1, 1, 1, 1, 2]


def test_decode_turns_any_decoder_exception_into_an_error_naming_the_input(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    random_image(1).save(path)
    import anomclip_hf.inference.inputs as inputs

    def broken(source):
        raise IndexError("a decoder bug")

    monkeypatch.setattr(inputs, "load_image", broken)
    with pytest.raises(ValueError, match=rf"cannot read image {path}: IndexError: a decoder bug"):
        decode(str(path))


def test_predict_reports_each_kind_of_bad_input_at_its_place(category):
    predictor = Predictor.from_model(category.model, batch_size=2)
    good = random_image(5)
    results = predictor.predict([good, b"", np.zeros((4, 4, 7), np.uint8), 3.5, np.asarray(good)])
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert "no image data" in results[1].error and "cannot score a float" in results[3].error
    assert results[0].score == pytest.approx(results[4].score, abs=1e-6)


# ------------------------------------------------------------------------------------- overlays
def test_scores_are_the_same_with_overlays_all_anomalous_and_none(category, tmp_path):
    paths = sorted(str(p) for p in category.good.rglob("*.png"))
    scores = dict(zip(paths, (p.score for p in Predictor.from_model(category.model).predict(paths))))
    threshold = float(np.median(list(scores.values())))  # about half the images anomalous
    runs = {}
    for choice in ("all", "anomalous", "none"):
        output = tmp_path / choice
        assert predict_command(category, category.good, output, "--overlays", choice, "--threshold",
                               repr(threshold)) == 0
        runs[choice] = read_csv(output / SCORES_FILE)
    assert runs["all"] == runs["anomalous"] == runs["none"]
    rows = runs["all"][1:]
    anomalous = {os.path.relpath(row[0], category.good) for row in rows if row[3] == "anomalous"}
    assert 0 < len(anomalous) < len(rows)  # the threshold splits the set: the test tells the modes apart

    def drawn(choice):
        folder = tmp_path / choice / OVERLAY_DIR
        return {str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.png")} if folder.exists() else set()

    assert drawn("all") == {os.path.splitext(os.path.relpath(row[0], category.good))[0] for row in rows}
    assert drawn("anomalous") == {os.path.splitext(name)[0] for name in anomalous}
    assert drawn("none") == set()
    for row in rows:  # the decisions of the in-process scores (the CSV's are rounded to 6 digits)
        assert row[3] == decision(scores[row[0]], threshold)
        assert float(row[1]) == pytest.approx(scores[row[0]], abs=1e-6)


def test_an_extreme_strip_gets_an_overlay_of_at_most_1536_px(category, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(3, (4000, 40)).save(folder / "strip.png")
    random_image(4, (40, 4000)).save(folder / "tall.png")
    result = Predictor.from_model(category.model).write([str(folder / "strip.png"), str(folder / "tall.png")],
                                                         str(tmp_path / "out"), root=str(folder), progress=False)
    assert len(result.scores) == 2
    for name in ("strip.png", "tall.png"):
        with Image.open(tmp_path / "out" / OVERLAY_DIR / name) as overlay:
            assert max(overlay.size) <= 1536, (name, overlay.size)


def test_write_records_its_files_and_the_next_run_removes_only_those(category, tmp_path):
    output = tmp_path / "out"
    predictor = Predictor.from_model(category.model)
    images = sorted(str(p) for p in category.good.rglob("*.png"))
    predictor.write(images, str(output), root=str(category.good), save_maps=True, progress=False)
    for folder in ("overlays", "maps", "masks", "overlays/sub"):
        (output / folder).mkdir(exist_ok=True)
        (output / folder / "mine.txt").write_text("the user's")
    (output / "masks" / "sub" / "000.png").unlink()  # the user removed one of ours: no harm
    predictor.write(images[:2], str(output), root=str(category.good), overlays="none", progress=False)
    kept = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    assert kept == sorted([MANIFEST_FILE, SCORES_FILE, "overlays/mine.txt", "overlays/sub/mine.txt",
                           "maps/mine.txt", "masks/mine.txt"])


# ------------------------------------------------------------------------------------- pipeline
def test_the_pipeline_builds_one_predictor_for_many_calls(category, monkeypatch):
    from transformers import pipeline

    import anomclip_hf  # noqa: F401 - registers the task
    from anomclip_hf.inference import pipeline_image_anomaly_detection as module

    built = []
    original = module.Predictor.from_model.__func__

    def counting(cls, *args, **kwargs):
        built.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(module.Predictor, "from_model", classmethod(counting))
    detector = pipeline("image-anomaly-detection", model=category.model, category="widget")
    images = [random_image(seed) for seed in range(5)]
    first = detector(images, batch_size=2)
    second = detector(images[:2])
    assert len(built) == 1
    direct = Predictor.from_model(category.model).predict(images)
    assert [r["score"] for r in first] == pytest.approx([p.score for p in direct], abs=1e-6)
    assert [r["score"] for r in second] == pytest.approx([p.score for p in direct[:2]], abs=1e-6)
