"""What a run writes: scores.csv, errors.csv, pictures drawn in the background, and the manifest that lets the
next run remove exactly those files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from inference_setup import random_image

from anomclip_hf.inference.writers import (
    ERRORS_FILE,
    MANIFEST_FILE,
    SCORES_FILE,
    PredictionWriter,
    RunManifest,
)


def read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def write_run(output, paths, scores, **options):
    with PredictionWriter(str(output), paths, threshold=0.5, pixel_threshold=0.6, **options) as writer:
        for path, score in zip(paths, scores):
            if score is None:
                writer.fail(path, "cannot read image")
            else:
                writer.add(path, random_image(len(path)), np.full((8, 8), score, np.float32), score)
    return writer.result


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_rows_errors_pictures_and_manifest_of_one_run(tmp_path):
    root = tmp_path / "in"
    paths = [str(root / "a.png"), str(root / "b" / "c.png"), str(root / "d.png")]
    result = write_run(tmp_path / "out", paths, [0.7, None, 0.2], root=str(root), overlays="anomalous",
                       save_maps=True)
    rows = read_csv(tmp_path / "out" / SCORES_FILE)
    assert rows == [["path", "image_score", "normalized_score", "decision"],
                    [paths[0], "0.700000", "0.700000", "anomalous"],  # 0.7 / (2 x 0.5)
                    [paths[2], "0.200000", "0.200000", "normal"]]
    assert read_csv(tmp_path / "out" / ERRORS_FILE) == [["path", "error"], [paths[1], "cannot read image"]]
    assert files_under(tmp_path / "out") == sorted([MANIFEST_FILE, SCORES_FILE, ERRORS_FILE, "overlays/a.png",
                                                    "maps/a.npy", "maps/d.npy", "masks/a.png", "masks/d.png"])
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert manifest["complete"] is True
    assert sorted(manifest["files"]) == sorted(set(files_under(tmp_path / "out")) - {MANIFEST_FILE})
    assert result.overlays == {paths[0]: str(tmp_path / "out" / "overlays" / "a.png")}
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "maps" / "d.npy"), np.full((8, 8), 0.2, np.float32))


def test_the_manifest_never_reaches_outside_its_folder(tmp_path):
    output, outside = tmp_path / "out", tmp_path / "outside"
    (output / "overlays").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    (output / "linked").symlink_to(outside, target_is_directory=True)
    (output / "overlays" / "ours.png").write_bytes(b"x")
    (output / MANIFEST_FILE).write_text(json.dumps({
        "format": "anomclip-run", "version": 1, "complete": True,
        "files": ["overlays/ours.png", "../outside/keep.txt", str(outside / "keep.txt"), "linked/keep.txt", "",
                  "overlays/../../outside/keep.txt", 7]}))
    RunManifest(str(output)).remove_recorded()
    assert (outside / "keep.txt").read_text() == "not the run's"
    assert not (output / "overlays").exists()  # emptied by the removal: gone; the link stays
    assert (output / "linked").is_symlink() and not (output / MANIFEST_FILE).exists()


def test_a_manifest_that_is_not_ours_removes_nothing(tmp_path):
    (tmp_path / "scores.csv").write_text("mine")
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"files": ["scores.csv"]}))  # no format: not a run's
    RunManifest(str(tmp_path)).remove_recorded()
    assert (tmp_path / "scores.csv").read_text() == "mine"
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    assert RunManifest(str(tmp_path)).recorded() == []


def test_a_killed_run_left_its_plan_and_the_next_run_removes_it(tmp_path):
    root = tmp_path / "in"
    paths = [str(root / f"{name}.png") for name in "abc"]
    with pytest.raises(KeyboardInterrupt):
        with PredictionWriter(str(tmp_path / "out"), paths, root=str(root), threshold=0.5) as writer:
            writer.add(paths[0], random_image(1), np.zeros((4, 4), np.float32), 0.9)
            raise KeyboardInterrupt  # killed after one picture
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert manifest["complete"] is False and "overlays/c.png" in manifest["files"]
    assert not (tmp_path / "out" / SCORES_FILE).exists()
    write_run(tmp_path / "out", paths[1:2], [0.1], root=str(root), overlays="none")
    assert files_under(tmp_path / "out") == sorted([MANIFEST_FILE, SCORES_FILE])  # a.png of the killed run: gone


def test_a_failed_picture_leaves_no_partial_file_and_names_it(tmp_path, monkeypatch):
    import anomclip_hf.inference.writers as writers

    def full_disk(image, anomaly_map, **options):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "anomaly_panel", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_run(tmp_path / "out", [str(tmp_path / "a.png")], [0.9], overlays="all")
    assert not any(name.endswith(".png") or "partial" in name for name in files_under(tmp_path / "out"))
