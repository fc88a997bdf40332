"""fit --tile records the tiling in the adapter; predict, export and the ONNX predict then tile alike, and a
different --tile is refused naming both settings."""

from __future__ import annotations

import csv
import json

import pytest

from anomclip_hf.cli import main
from anomclip_hf.data.synthetic_trees import generate_highres_tree
from anomclip_hf.model.embedded_base import embedded_demo_model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled_cli")
    generate_highres_tree(root / "data", categories=("sheet",), n_train=2, n_test_good=1, n_test_defect=1,
                          image_size=280, defect_count=2, defect_size=(4, 8))
    embedded_demo_model(seed=0).save_pretrained(root / "base")
    assert main(["fit", "--base", str(root / "base"), "--references", str(root / "data" / "sheet" / "train" / "good"),
                 "--category", "sheet", "--output", str(root / "fit"), "--epochs", "1", "--tile", "112",
                 "--tile-overlap", "0.25"]) == 0
    return root


def test_fit_records_the_tiling_and_predict_uses_it(fitted, capsys):
    record = json.loads((fitted / "fit" / "adapter" / "category.json").read_text())
    assert record["tiling"]["tile"] == 112 and record["tiling"]["tiles_per_reference"] == 16
    assert record["shots"] == 32 and record["decision_threshold"] is not None
    assert main(["predict", "--base", str(fitted / "base"), "--category", str(fitted / "fit" / "adapter"),
                 "--images", str(fitted / "data" / "sheet" / "test"), "--output", str(fitted / "out"),
                 "--save-maps"]) == 0
    with open(fitted / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(float(row["image_score"]) >= 0 for row in rows)
    import numpy as np

    maps = sorted((fitted / "out" / "maps").rglob("*.npy"))
    assert maps and np.load(maps[0]).shape == (280, 280)  # the stitched map, at the image's resolution


def test_a_different_tile_is_refused_naming_both(fitted, capsys):
    assert main(["predict", "--base", str(fitted / "base"), "--category", str(fitted / "fit" / "adapter"),
                 "--images", str(fitted / "data" / "sheet" / "test"), "--output", str(fitted / "out2"),
                 "--tile", "56"]) != 0
    assert ("--tile 56 --tile-overlap 0.25 differs from the adapter's --tile 112 --tile-overlap 0.25"
            in capsys.readouterr().err)
    assert not (fitted / "out2" / "scores.csv").exists()
