"""`anomclip app`: the plain-Python workspace (fit, score, re-decide, zip, limits, bad files) and the page in a
real headless Chromium (Playwright with the system browser; never a browser download)."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import socket
import struct
import zipfile

import numpy as np
import pytest
import torch
from tiny_models import perturb_norms, tiny_clip_config
from PIL import Image
from transformers import CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.app.base import choose_base
from anomclip_hf.app.results import ScoredImage, ScoredSet, write_scores_csv
from anomclip_hf.app.uploads import stage_files
from anomclip_hf.app.workspace import BusyError, Workspace
from anomclip_hf.data import render_normal, render_sample
from anomclip_hf.inference.batch_scoring import score_images
from anomclip_hf.inference.writers import NOT_AN_IMAGE
from anomclip_hf.inference.visualization import overlay_layout
from anomclip_hf.model.category_io import REQUIRED_FILES
from anomclip_hf.model.thresholds import decision, normalized_score
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 1000}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A saved tiny random AnomCLIP base folder (what --base takes)."""
    torch.manual_seed(0)
    clip = perturb_norms(CLIPModel(tiny_clip_config(image_size=32, patch_size=4))).eval()
    folder = tmp_path_factory.mktemp("app") / "tiny-base"
    AnomCLIPModel.from_clip(clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """Three good references, a good and a defective test image (synthetic), a corrupt PNG and a text file."""
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for index in range(3):
        paths[f"ref{index}"] = folder / f"ref{index}.png"
        Image.fromarray(render_normal("widget", f"train_{index}", size=64)).save(paths[f"ref{index}"])
    paths["good"] = folder / "good.png"
    Image.fromarray(render_normal("widget", "test_good", size=64)).save(paths["good"])
    paths["defect"] = folder / "defect.png"
    Image.fromarray(render_sample("widget", "test_defect", size=64, defects=("blob",)).image).save(paths["defect"])
    paths["corrupt"] = folder / "corrupt.png"
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths["notes"] = folder / "notes.txt"
    paths["notes"].write_text("not an image")
    return {name: str(path) for name, path in paths.items()}


def test_the_page_normalises_as_scores_csv_does():
    # One normalisation for the page, scores.csv and the pipeline: thresholds.normalized_score.
    image = ScoredImage(name="a.png", path="a.png", overlay="", score=0.1, anomaly_map=np.zeros((2, 2)))
    result = ScoredSet(category="widget", stored_threshold=0.2, pixel_threshold=None, images=[image])
    assert result.rows(0.2)[0]["normalized_score"] == normalized_score(0.1, 0.2) == pytest.approx(0.25)
    result.stored_threshold = None
    assert result.rows(None)[0]["normalized_score"] is None


def test_stage_files_limits_names_and_rejections(tmp_path, images):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * 2 ** 20))
    staged = stage_files([images["good"], images["good"], images["notes"], str(big)], str(tmp_path / "staged"),
                         max_file_mb=1)
    assert [os.path.basename(p) for p in staged.images] == ["good.png", "good-2.png"]
    assert staged.rejected == [("notes.txt", NOT_AN_IMAGE), ("big.png", "2.0 MB, over the 1 MB limit; skipped")]
    with pytest.raises(ValueError, match="3 files given; at most 2"):
        stage_files([images["good"]] * 3, str(tmp_path / "other"), max_files=2)


def test_choose_base_offline_offers_the_embedded_base(monkeypatch, tmp_path):
    import anomclip_hf.app.base as base

    with pytest.raises(ValueError, match="neither a folder nor a Hub model id"):
        choose_base("no such//base")
    monkeypatch.setattr(base, "is_cached", lambda name: False)
    monkeypatch.setattr(base, "hub_reachable", lambda: False)
    offline = choose_base(None)
    assert offline.model is None and "cannot be reached" in offline.message and "PIPELINE CHECK" in offline.message
    embedded = choose_base("anomclip-demo-random")
    assert embedded.pipeline_check and isinstance(embedded.model, AnomCLIPModel)
    workspace = Workspace(embedded, str(tmp_path))
    assert workspace.label("x").startswith("**PIPELINE CHECK**")


def test_workspace_fits_scores_redecides_and_exports(tmp_path, tiny_base, images, fake_hub):
    workspace = Workspace(choose_base(tiny_base), str(tmp_path / "work"))
    server_folder = tmp_path / "on-server"
    server_folder.mkdir()
    shutil.copy(images["ref1"], server_folder)
    epochs_seen = []
    outcome = workspace.fit([images["ref0"], images["corrupt"], images["notes"]], "widget",
                            server_folder=str(server_folder), epochs=2,
                            progress=lambda epoch, total, logs: epochs_seen.append((epoch, total)))
    assert epochs_seen == [(1, 2), (2, 2)]
    assert outcome.shots == 2 and outcome.epochs == 2
    assert {name for name, _ in outcome.rejected} == {"corrupt.png", "notes.txt"}
    stored = workspace.model.get_category("widget").metadata["decision_threshold"]
    assert outcome.threshold == stored and stored > 0

    scored = workspace.score([images["good"], images["defect"], images["corrupt"], images["notes"]])
    assert [image.name for image in scored.images] == ["good.png", "defect.png"]
    assert dict(scored.failures).keys() == {"corrupt.png", "notes.txt"}
    assert workspace.work_dir not in str(scored.failures) and workspace.work_dir not in str(outcome.rejected)
    assert all(os.path.isfile(image.overlay) for image in scored.images)
    # Gallery pictures carry no decision label (the slider decides): the panels of a 64 px image, no header.
    assert [Image.open(image.thumbnail).size for image in scored.images] == [overlay_layout((64, 64), 0).size] * 2

    # Decisions at any threshold come from the stored scores; the counts follow score >= threshold.
    scores = np.array([image.score for image in scored.images])
    for threshold in (0.0, float(scores.min()), float(scores.max()) + 1e-6, stored):
        assert scored.anomalous(threshold) == int((scores >= threshold).sum())
    rows = list(csv.DictReader(open(write_scores_csv(scored, 0.3, str(tmp_path / "s.csv")), encoding="utf-8")))
    assert [(r["name"], float(r["image_score"]), r["decision"]) for r in rows] == [
        (image.name, pytest.approx(image.score, abs=1e-6), decision(image.score, 0.3)) for image in scored.images]
    assert float(rows[0]["normalized_score"]) == pytest.approx(normalized_score(scores[0], stored), abs=1e-6)

    # The zipped adapter, loaded into a fresh copy of the base, scores the same images the same.
    extracted = tmp_path / "unzipped"
    with zipfile.ZipFile(workspace.adapter_zip()) as archive:
        archive.extractall(extracted)
    fresh = AnomCLIPModel.from_base(tiny_base)
    fresh.load_category(str(extracted))
    again = next(iter(score_images(fresh, [images["good"], images["defect"]], progress=False))).image_scores
    np.testing.assert_allclose(np.asarray(again, dtype=np.float64), scores, atol=1e-5)

    # A second workspace loads the unzipped adapter, or the one pushed to the (fake) Hub, and scores the same.
    message = workspace.push("user/anomclip-widget")
    assert "Pushed category 'widget' to user/anomclip-widget (commit " in message
    for source in (str(extracted), "user/anomclip-widget"):
        other = Workspace(choose_base(tiny_base), str(tmp_path / "other"))
        assert f"stored threshold {stored:.4f}" in other.load_adapter(source)
        rescored = other.score([images["good"], images["defect"]])
        np.testing.assert_allclose([image.score for image in rescored.images], scores, atol=1e-5)

    # Off when the app listens beyond this machine: reading folders on the server.
    remote = Workspace(workspace.base, str(tmp_path / "remote"), allow_server_folders=False)
    with pytest.raises(ValueError, match="reading a folder on the server is off"):
        remote.fit([], "widget", server_folder=str(server_folder), epochs=1)

    # One job at a time: a second fit while the model is held is refused, not queued.
    with workspace.exclusive("fitting 'other'"):
        with pytest.raises(BusyError, match="fitting 'other'"):
            workspace.fit([images["ref0"]], "second", epochs=1)


def test_embedded_base_labels_every_result_pipeline_check(tmp_path, images):
    from anomclip_hf.app.layout import (
        banner_text,
        gallery_items,
        summary_text,
        table_html,
    )

    workspace = Workspace(choose_base("anomclip-demo-random"), str(tmp_path / "work"))
    assert "PIPELINE CHECK" in banner_text(workspace)
    outcome = workspace.fit([images["ref0"], images["ref1"]], "widget", epochs=1)
    scored = workspace.score([images["defect"]])
    threshold = outcome.threshold
    assert scored.pipeline_check
    assert "PIPELINE CHECK" in summary_text(scored, threshold) and "PIPELINE CHECK" in table_html(scored, threshold)
    assert gallery_items(scored, threshold)[0][1].startswith("PIPELINE CHECK | defect.png")
    rows = list(csv.DictReader(open(write_scores_csv(scored, threshold, str(tmp_path / "s.csv")), encoding="utf-8")))
    assert rows[0]["note"].startswith("PIPELINE CHECK")
    # The pictures carry the note as a label band (one line above the three panels).
    overlay, thumbnail = Image.open(scored.images[0].overlay), Image.open(scored.images[0].thumbnail)
    assert thumbnail.height > 64 and overlay.height > thumbnail.height


def test_cli_app_bad_base_is_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("gradio")
    from anomclip_hf.cli import main

    assert main(["app", "--base", str(tmp_path / "missing" / "base")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("anomclip app: error:") and "neither a folder nor a Hub model id" in error
    assert len(error.splitlines()) == 1


# ---------------------------------------------------------------------------------------------- browser
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _browser_missing() -> str:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is missing (pip install playwright; no `playwright install` needed)"
    return ""


def _page_rows(page) -> list[tuple[str, str, str, str]]:
    return [tuple(row.locator(f"td.{name}").inner_text().strip() for name in ("name", "score", "normalized", "decision"))
            for row in page.locator("#scores-table tbody tr").all()]


def _anomalous_count(page) -> int:
    text = page.locator("#summary").inner_text()
    return int(text.split(" of ")[0].split()[-1])


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "browser present")
def test_app_in_a_headless_browser(tmp_path, tiny_base, images, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    from playwright.sync_api import sync_playwright

    from anomclip_hf.app.launch import build, serve

    app, workspace = build(tiny_base, work_dir=str(tmp_path / "work"))
    port = _free_port()
    serve(app, workspace, "127.0.0.1", port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/")
            assert "Base: " in page.locator("#banner").inner_text()

            # 1. Fit on two references (plus a text file, which is reported), 2 epochs.
            page.locator("#references input[type=file]").set_input_files(
                [images["ref0"], images["ref1"], images["notes"]])
            page.locator("#references", has_text="ref1").wait_for()  # uploaded
            page.locator("#category input, #category textarea").first.fill("widget")
            page.locator("#epochs input").first.fill("2")
            page.locator("#fit").click()
            page.locator("#fit-status", has_text="stored threshold").wait_for()
            status = page.locator("#fit-status").inner_text()
            stored = workspace.model.get_category("widget").metadata["decision_threshold"]
            assert f"stored threshold {stored:.4f}" in status and "notes.txt" in status

            # 2. Score a good and a defective image; read the two scores from the page.
            page.locator("#test-images input[type=file]").set_input_files(
                [images["good"], images["defect"], images["corrupt"]])
            page.locator("#test-images", has_text="defect").wait_for()
            page.locator("#score").click()
            page.locator("#scores-table td.score").nth(1).wait_for()
            assert "corrupt.png" in page.locator("#score-status").inner_text()  # reported, the rest scored
            rows = _page_rows(page)
            assert [row[0] for row in rows] == ["good.png", "defect.png"]
            scores = [float(row[1]) for row in rows]
            fresh = AnomCLIPModel.from_base(tiny_base)
            fresh.load_category(workspace.export_adapter())
            expected = next(iter(score_images(fresh, [images["good"], images["defect"]], progress=False)))
            np.testing.assert_allclose(scores, np.asarray(expected.image_scores, dtype=np.float64), atol=2e-6)
            assert [float(row[2]) for row in rows] == pytest.approx([normalized_score(s, stored) for s in scores],
                                                                     abs=2e-6)

            # Threshold slider: everything anomalous at 0, nothing above both scores; the page re-decides.
            slider = page.locator("#threshold input[type=number]")
            counts = []
            for threshold in (0.0, round(max(scores) + 0.001, 4)):
                slider.fill(str(threshold))
                slider.press("Enter")
                want = sum(score >= threshold for score in scores)
                page.locator("#summary", has_text=f"{want} of 2 images anomalous at threshold {threshold:.4f}").wait_for()
                counts.append(_anomalous_count(page))
                assert [row[3] for row in _page_rows(page)] == [decision(s, threshold) for s in scores]
            assert counts == [2, 0]

            # Download scores.csv: the same rows as the page.
            with page.expect_download() as download:
                page.locator("#download-scores").click()
            saved = tmp_path / "downloaded-scores.csv"
            download.value.save_as(saved)
            table = [(r["name"], r["image_score"], r["normalized_score"], r["decision"])
                     for r in csv.DictReader(open(saved, encoding="utf-8"))]
            assert table == _page_rows(page)

            # The adapter as a zip: a complete adapter folder of the fitted category.
            with page.expect_download() as download:
                page.locator("#download-adapter").click()
            assert download.value.suggested_filename == "widget-adapter.zip"
            with zipfile.ZipFile(download.value.path()) as archive:
                assert set(REQUIRED_FILES) <= set(archive.namelist())

            # Click an overlay: it is shown large.
            page.locator("#gallery button.thumbnail-item").first.click()
            page.locator("#large-view img").wait_for()
            assert "good.png" in page.locator("#large-caption").inner_text()

            page.evaluate("document.querySelector('#score').scrollIntoView()")
            shot = tmp_path / "results.png"
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        app.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    assert Image.open(io.BytesIO(data)).size == (width, height)
    if os.environ.get("ANOMCLIP_APP_SCREENSHOT"):  # README screenshot: copy it out of the tmp dir
        shutil.copyfile(shot, os.environ["ANOMCLIP_APP_SCREENSHOT"])
