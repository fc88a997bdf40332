"""The bounded visual memory: chunked exact search, faiss, the greedy coreset and its radius, checked
against brute-force computations done here; coreset adapters saved, loaded and scored on every path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from anomclip_hf.memory.coreset import (
    greedy_k_center,
    johnson_lindenstrauss_dim,
    select_coreset,
)
from anomclip_hf.memory.rows import SpilledRows
from anomclip_hf.memory.search import nearest_distance, nearest_similarity


def _unit(rows: int, width: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)), dim=1)


def _clustered(rows: int, width: int, seed: int, clusters: int = 12) -> torch.Tensor:
    """Unit rows around a few centres, with exact duplicates, as patches of normal parts are."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, width, generator=generator)
    labels = torch.randint(clusters, (rows,), generator=generator)
    features = centres[labels] + 0.3 * torch.randn(rows, width, generator=generator)
    features[rows // 2: rows // 2 + 20] = features[0]  # repeated patches (flat background)
    return F.normalize(features, dim=1)


# ------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("max_block_elements", [7, 1000, 1 << 22])
def test_exact_chunked_search_equals_brute_force(max_block_elements):
    queries, bank = _unit(300, 24, 0), _unit(1000, 24, 1)
    brute = (queries.double() @ bank.double().T).max(dim=1).values
    found = nearest_similarity(queries, bank, max_block_elements=max_block_elements)
    assert found.dtype == torch.float32 and found.shape == (300,)
    assert float((found.double() - brute).abs().max()) < 1e-6


def test_nearest_distance_equals_brute_force_for_any_norm():
    generator = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(200, 10, generator=generator), 3 * torch.randn(700, 10, generator=generator)
    brute = torch.cdist(queries.double(), bank.double()).min(dim=1).values
    found = nearest_distance(queries, bank, max_block_elements=500)
    assert float((found.double() - brute).abs().max()) < 1e-4


def test_faiss_exact_index_equals_the_torch_search():
    pytest.importorskip("faiss")
    queries, bank = _unit(450, 64, 3), _unit(5000, 64, 4)
    torch_search = nearest_similarity(queries, bank)
    faiss_search = nearest_similarity(queries, bank, faiss=True)
    assert float((faiss_search - torch_search).abs().max()) < 1e-5
    bank.mul_(-1)  # an in-place change of the bank: the cached index is rebuilt
    assert float((nearest_similarity(queries, bank, faiss=True)
                  - nearest_similarity(queries, bank)).abs().max()) < 1e-5


def test_search_refuses_mismatched_widths_and_unknown_methods():
    from anomclip_hf.model.scoring import memory_patch_scores

    with pytest.raises(ValueError, match=r"queries \(3, 8\) and bank \(5, 9\)"):
        nearest_similarity(torch.zeros(3, 8), torch.zeros(5, 9))
    with pytest.raises(ValueError, match="search='annoy'"):
        memory_patch_scores([torch.zeros(1, 3, 8)], [torch.zeros(5, 8)], search="annoy")


def test_faiss_memory_scores_equal_the_exact_ones():
    pytest.importorskip("faiss")
    from anomclip_hf.model.scoring import memory_patch_scores

    features, bank = [_unit(450, 32, 11).reshape(2, 225, 32)], [_unit(3000, 32, 12)]
    exact = memory_patch_scores(features, bank, search="exact")
    assert float((memory_patch_scores(features, bank, search="faiss") - exact).abs().max()) < 1e-5


# ------------------------------------------------------------------------------------------- coreset
def _plain_greedy(points: torch.Tensor, size: int, first: int) -> list[int]:
    """The textbook greedy k-center, with full distance rows (float64)."""
    points = points.double()
    kept = [first]
    nearest = torch.cdist(points, points[first: first + 1])[:, 0]
    while len(kept) < size:
        kept.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, torch.cdist(points, points[kept[-1]: kept[-1] + 1])[:, 0])
    return kept


def test_lazy_greedy_selects_what_the_plain_greedy_selects():
    points = torch.randn(3000, 16, generator=torch.Generator().manual_seed(5))
    kept = greedy_k_center(points, 200, seed=7, block_rows=256)
    assert kept.tolist() == _plain_greedy(points, 200, int(kept[0]))
    assert len(set(kept.tolist())) == 200


@pytest.mark.parametrize("width", [24, 512])  # 512: wider than the JL width, so the selection runs projected
def test_coreset_covers_every_row_within_the_stored_radius(width):
    features = _clustered(2000, width, 6)
    coreset = select_coreset(features, 150, seed=0)
    assert (coreset.projection_dim is not None) == (johnson_lindenstrauss_dim(2000) < width)
    # independent recomputation: every row's distance to its nearest kept row, brute force in float64
    distances = torch.cdist(features.double(), features[coreset.indices].double()).min(dim=1).values
    assert coreset.radius == pytest.approx(float(distances.max()), abs=1e-4)
    assert float(distances.max()) <= coreset.radius + 1e-4
    # memory scores: a kept row scores 0, any row at most radius^2 / 4 against the coreset
    scores = (1 - nearest_similarity(features, features[coreset.indices])) / 2
    assert float(scores.max()) <= coreset.radius ** 2 / 4 + 1e-5
    assert coreset.indices.unique().numel() == 150 and coreset.rows == 2000


def test_coreset_is_deterministic_for_a_seed_and_from_spilled_rows():
    features = _clustered(1500, 20, 8)
    first, again = select_coreset(features, 100, seed=3), select_coreset(features, 100, seed=3)
    assert torch.equal(first.indices, again.indices) and first.radius == again.radius
    assert not torch.equal(select_coreset(features, 100, seed=4).indices, first.indices)
    with SpilledRows(20) as spilled:
        for start in range(0, 1500, 128):
            spilled.append(features[start: start + 128])
        assert spilled.shape == (1500, 20) and torch.equal(spilled[100:1400], features[100:1400])
        assert torch.equal(spilled.take(torch.tensor([7, 1499, 0, 7])), features[[7, 1499, 0, 7]])
        from_disk = select_coreset(spilled, 100, seed=3)
    assert torch.equal(from_disk.indices, first.indices) and from_disk.radius == first.radius


def test_coreset_of_every_row_has_radius_zero_and_a_larger_coreset_never_covers_worse():
    features = _clustered(400, 12, 9)
    assert select_coreset(features, 400).radius == 0.0
    radii = [select_coreset(features, size, seed=1).radius for size in (10, 40, 160)]
    assert radii[0] >= radii[1] >= radii[2] > 0


def test_greedy_memory_is_linear_in_the_rows():
    # 120,000 rows: an N x N float32 distance matrix would need 57 GB; the greedy needs a few MB
    points = torch.randn(120_000, 4, generator=torch.Generator().manual_seed(10))
    kept = greedy_k_center(points, 64, seed=0)
    assert kept.unique().numel() == 64


def test_johnson_lindenstrauss_dim_is_scikit_learns():
    random_projection = pytest.importorskip("sklearn.random_projection")
    for rows, eps in ((225_000, 0.9), (2000, 0.9), (14_400, 0.5)):
        assert johnson_lindenstrauss_dim(rows, eps) == random_projection.johnson_lindenstrauss_min_dim(rows, eps=eps)


# ------------------------------------------------------------------------------------------- coreset categories
PATCHES = 225  # tiny CLIP: (30 / 2)^2


def _references(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 30, 30, generator=torch.Generator().manual_seed(seed))


def _fresh(tiny_clip):
    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))


@pytest.fixture(scope="module")
def coreset_model(tiny_clip):
    model = _fresh(tiny_clip)
    model.config.memory_search = "exact"
    references = _references(6)
    model.add_category("widget", reference_images=references, memory_size=300, seed=1)
    model.estimate_thresholds(references)
    model.add_category("widget_full", reference_images=references)
    return model, references


def test_coreset_category_keeps_its_rows_and_covers_the_full_bank_within_its_radius(coreset_model):
    model, references = coreset_model
    state, full = model.get_category("widget"), model.get_category("widget_full")
    assert state.shots == 6 and [tuple(layer.shape) for layer in state.memory_bank] == [(300, 32), (300, 32)]
    assert state.coreset["size"] == 300 and state.coreset["rows"] == 6 * PATCHES and state.coreset["seed"] == 1
    for layer, kept, radius, sources in zip(full.memory_bank, state.memory_bank, state.coreset["coverage_radius"],
                                            state.coreset_sources):
        rows = layer.reshape(-1, 32)
        # every kept row is a row of the full bank, from the reference it is said to come from
        matches = torch.cdist(kept.double(), rows.double()).argmin(dim=1)
        assert torch.equal(rows[matches], kept) and torch.equal(matches // PATCHES, sources)
        # independent recomputation of the radius: brute-force distances of every full-bank row to the kept ones
        distances = torch.cdist(rows.double(), kept.double()).min(dim=1).values
        assert radius == pytest.approx(float(distances.max()), abs=1e-4)


def test_the_radius_bounds_the_memory_scores_of_any_image(coreset_model):
    model, _ = coreset_model
    state, full = model.get_category("widget"), model.get_category("widget_full")
    with torch.no_grad():
        features = model.encode_images(_references(3, seed=5)).memory_features
    for feature, kept, layer, radius in zip(features, state.memory_bank, full.memory_bank,
                                            state.coreset["coverage_radius"]):
        queries = feature.reshape(-1, 32)
        to_coreset = (2 - 2 * nearest_similarity(queries, kept)).clamp_min(0).sqrt()
        to_full = (2 - 2 * nearest_similarity(queries, layer.reshape(-1, 32))).clamp_min(0).sqrt()
        assert bool((to_coreset >= to_full - 1e-4).all()) and bool((to_coreset <= to_full + radius + 1e-4).all())


def test_coreset_leave_one_out_scores_each_reference_without_its_own_rows(coreset_model):
    model, references = coreset_model
    state = model.get_category("widget")
    estimate = state.metadata["threshold_estimate"]
    with torch.no_grad():
        vision = model.encode_images(references)
    full_scores, _ = model.leave_one_out_scores(vision, "widget_full")
    for index in range(6):
        others = [kept[source != index] for kept, source in zip(state.memory_bank, state.coreset_sources)]
        held_out = type(vision)(vision.global_embeds[index: index + 1], vision.patch_embeds[index: index + 1],
                                [layer[index: index + 1] for layer in vision.memory_features])
        with torch.no_grad():
            expected = model.score_features(held_out, "widget", output_size=model.config.scoring_size,
                                            memory_bank=others).image_scores[0]
        assert estimate["leave_one_out_image_scores"][index] == pytest.approx(float(expected), abs=1e-6)
        # a subset of the other references' rows is never nearer: never below the full bank's leave-one-out
        assert estimate["leave_one_out_image_scores"][index] >= float(full_scores[index]) - 1e-6
    assert state.metadata["decision_threshold"] == pytest.approx(1.1 * max(estimate["leave_one_out_image_scores"]))


def test_coreset_adapter_saves_loads_and_scores_the_same(coreset_model, tiny_clip, tmp_path):
    model, _ = coreset_model
    folder = tmp_path / "adapter"
    model.save_category(str(folder), "widget")
    record = json.loads((folder / "category.json").read_text())
    assert record["format_version"] == 2 and record["shots"] == 6
    assert record["memory"]["coreset"]["coverage_radius"] == model.get_category("widget").coreset["coverage_radius"]
    assert "radius" in json.dumps(record["memory"]["coreset"]) and "Coverage radius" in (folder / "README.md").read_text()
    tensors = load_file(str(folder / "memory_bank.safetensors"))
    assert {key: tuple(t.shape) for key, t in tensors.items()} == {"layer_0": (300, 32), "layer_1": (300, 32)}
    other = _fresh(tiny_clip)
    other.config.memory_search = "exact"
    loaded = other.load_category(str(folder))
    assert loaded.shots == 6 and loaded.coreset == model.get_category("widget").coreset
    pixels = _references(2, seed=9)
    with torch.no_grad():
        before, after = model(pixels, category="widget"), other(pixels, category="widget")
    assert torch.equal(before.image_scores, after.image_scores) and torch.equal(before.anomaly_maps, after.anomaly_maps)
    with pytest.raises(ValueError, match="thresholds of a coreset are estimated where it is built"):
        other.estimate_thresholds(_references(6))
    # an exact adapter is still written as format 1, which anomclip-hf 0.1 reads
    model.save_category(str(tmp_path / "exact"), "widget_full")
    assert json.loads((tmp_path / "exact" / "category.json").read_text())["format_version"] == 1


def test_adapters_saved_by_0_1_load_unchanged_and_resave_as_format_1(tmp_path):
    from anomclip_hf import AnomCLIPModel

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "saved_by_0.1.0"
    model = AnomCLIPModel.from_pretrained(str(fixtures / "base"))
    expected = json.loads((fixtures / "scores.json").read_text())
    for name in ("widget", "trained"):
        state = model.load_category(str(fixtures / name))
        assert state.coreset is None and state.memory_bank[0].ndim == 3
        saved = json.loads((fixtures / name / "category.json").read_text())
        assert saved["format_version"] == 1 and "coreset" not in saved["memory"]
        model.save_category(str(tmp_path / name), name)
        assert json.loads((tmp_path / name / "category.json").read_text())["format_version"] == 1
        assert expected[name]["image_scores"]  # the scores test_saved_fixtures holds them to


def test_default_rule_is_exact_up_to_the_limit_then_a_logged_coreset(tiny_clip, monkeypatch, caplog):
    from anomclip_hf.memory import policy

    assert policy.memory_rows(16384) is None and policy.memory_rows(16385) == 16384
    assert policy.memory_rows(1000, coreset_ratio=0.1) == 100 and policy.memory_rows(1000, coreset_ratio=1.0) is None
    assert policy.memory_rows(1000, memory_size=1000) is None and policy.memory_rows(1000, memory_size=10) == 10
    monkeypatch.setattr(policy, "DEFAULT_MAX_EXACT_ROWS", 2 * PATCHES)
    model = _fresh(tiny_clip)
    exact = model.add_category("two", reference_images=_references(2))
    assert exact.coreset is None and exact.memory_bank[0].shape == (2, PATCHES, 32)
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            coreset = model.add_category("three", reference_images=_references(3))
    finally:
        hf_logging.disable_propagation()
    assert coreset.coreset["size"] == 2 * PATCHES and coreset.shots == 3
    assert "keeping a greedy coreset of 450 rows" in caplog.text


def test_streamed_references_equal_one_batch_and_spill_to_disk(tiny_clip):
    from anomclip_hf.memory.rows import SpilledRows
    from anomclip_hf.model.memory_bank import build_memory, encode_references

    model = _fresh(tiny_clip)
    pixels = _references(7, seed=3)
    with torch.no_grad():
        whole = model.encode_images(pixels)
    streamed = encode_references(model, pixels, batch_size=3)
    spilled = encode_references(model, pixels, batch_size=2, spill=True)
    assert float((streamed.global_embeds - whole.global_embeds).abs().max()) < 1e-6
    for layer, streamed_layer, spilled_layer in zip(whole.memory_features, streamed.memory_features,
                                                    spilled.memory_features):
        assert float((streamed_layer - layer).abs().max()) < 1e-6
        assert isinstance(spilled_layer, SpilledRows) and spilled_layer.shape == (7 * PATCHES, 32)
        assert float((spilled_layer[:].reshape(7, PATCHES, 32) - layer).abs().max()) < 1e-6
    in_memory, on_disk = build_memory(streamed, 200, seed=2), build_memory(spilled, 200, seed=2)
    assert torch.equal(in_memory.sources[0], on_disk.sources[0])
    assert in_memory.coreset["coverage_radius"] == pytest.approx(on_disk.coreset["coverage_radius"], abs=1e-5)


# ------------------------------------------------------------------------------------------- every path
@pytest.fixture(scope="module")
def fitted_coreset(tmp_path_factory, tiny_clip):
    """`anomclip fit --memory-size 400` on a folder of 6 generated normal images, with the base it used."""
    from anomclip_hf.cli import main
    from anomclip_hf.data import generate_mvtec_tree

    root = tmp_path_factory.mktemp("coreset_paths")
    _fresh(tiny_clip).save_pretrained(root / "base")
    generate_mvtec_tree(root / "data", categories=("widget",), n_train=6, n_test_good=2, n_test_defect=2,
                        image_size=48, seed=0)
    assert main(["fit", "--base", str(root / "base"), "--references", str(root / "data" / "widget" / "train" / "good"),
                 "--category", "widget", "--output", str(root / "fit"), "--epochs", "2", "--memory-size", "400",
                 "--quiet"]) == 0
    from anomclip_hf import AnomCLIPModel

    model = AnomCLIPModel.from_base(str(root / "base"))
    model.load_category(str(root / "fit" / "adapter"))
    images = sorted(str(p) for p in (root / "data" / "widget" / "test").rglob("*.png"))
    return {"root": root, "adapter": root / "fit" / "adapter", "model": model, "images": images}


def _model_scores(model, images) -> list[float]:
    from anomclip_hf.model.processing_anomclip import model_pixel_values

    with torch.no_grad():
        return model(model_pixel_values(model.config, images)).image_scores.tolist()


def test_fit_writes_a_coreset_adapter(fitted_coreset):
    record = json.loads((fitted_coreset["adapter"] / "category.json").read_text())
    coreset = record["memory"]["coreset"]
    assert record["shots"] == 6 and coreset["size"] == 400 and coreset["rows"] == 6 * PATCHES
    assert len(coreset["coverage_radius"]) == 2 and record["learned_prompts"] and record["decision_threshold"] > 0
    assert "Coverage radius" in (fitted_coreset["adapter"] / "README.md").read_text()
    summary = json.loads((fitted_coreset["root"] / "fit" / "summary.json").read_text())
    assert summary["memory"]["size"] == 400


def test_predict_and_the_pipeline_score_a_coreset_adapter_as_the_model(fitted_coreset, tmp_path):
    import csv

    from transformers import pipeline

    from anomclip_hf.cli import main

    root, images = fitted_coreset["root"], fitted_coreset["images"]
    expected = dict(zip(images, _model_scores(fitted_coreset["model"], images)))
    assert main(["predict", "--base", str(root / "base"), "--category", str(fitted_coreset["adapter"]),
                 "--images", str(root / "data" / "widget" / "test"), "--output", str(tmp_path / "pred")]) == 0
    with open(tmp_path / "pred" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(images)
    for row in rows:
        path = next(p for p in images if p.endswith(row["path"]))
        assert float(row["image_score"]) == pytest.approx(expected[path], abs=1e-5)
    detector = pipeline("image-anomaly-detection", model=str(root / "base"), category=str(fitted_coreset["adapter"]))
    results = detector(images[:2], batch_size=2)
    assert [r["score"] for r in results] == pytest.approx([expected[p] for p in images[:2]], abs=1e-5)


def test_onnx_export_of_a_coreset_adapter_runs_torch_free_within_1e_4(fitted_coreset):
    pytest.importorskip("onnxruntime")
    from anomclip_hf.cli import main
    from anomclip_hf.export import OnnxAnomalyDetector

    root = fitted_coreset["root"]
    assert main(["export", "--base", str(root / "base"), "--category", str(fitted_coreset["adapter"]),
                 "--output", str(root / "widget.onnx")]) == 0
    result = OnnxAnomalyDetector(str(root / "widget.onnx"))(fitted_coreset["images"], batch_size=3)
    expected = _model_scores(fitted_coreset["model"], fitted_coreset["images"])
    assert float(abs(torch.tensor(result.image_scores) - torch.tensor(expected)).max()) < 1e-4
    sidecar = json.loads((root / "widget.onnx.json").read_text())
    assert sidecar["category"]["memory"]["coreset"]["size"] == 400


def test_a_coreset_adapter_travels_through_the_hub(fitted_coreset, fake_hub, tiny_clip):
    from anomclip_hf import AnomCLIPModel
    from anomclip_hf.model.publishing import upload_category_folder

    upload_category_folder(str(fitted_coreset["adapter"]), "tester/anomclip-widget-coreset")
    model = AnomCLIPModel.from_base(str(fitted_coreset["root"] / "base"))
    state = model.load_category("tester/anomclip-widget-coreset")
    assert state.coreset["size"] == 400 and tuple(state.memory_bank[0].shape) == (400, 32)
    images = fitted_coreset["images"]
    assert _model_scores(model, images) == _model_scores(fitted_coreset["model"], images)


def test_evaluate_builds_a_coreset_by_the_default_rule(fitted_coreset, tmp_path, monkeypatch):
    from anomclip_hf.cli import main
    from anomclip_hf.memory import policy

    monkeypatch.setattr(policy, "DEFAULT_MAX_EXACT_ROWS", 300)  # 2 shots = 450 rows: a coreset of 300
    root = fitted_coreset["root"]
    assert main(["evaluate", "--base", str(root / "base"), "--dataset", "mvtec", "--data-root", str(root / "data"),
                 "--categories", "widget", "--shots", "2", "--seeds", "0", "--no-train", "--resolution", "40",
                 "--output", str(tmp_path / "eval"), "--no-progress"]) == 0
    record = json.loads(next((tmp_path / "eval").rglob("category.json")).read_text())
    assert record["memory"]["coreset"]["size"] == 300
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert 0 <= results["tables"]["image_auroc"]["widget"]["2"]["mean"] <= 1


def test_the_shortlist_takes_a_bank_made_under_inference_mode():
    # leave-one-out builds its banks (the references but one) under torch.inference_mode; the bf16 shortlist
    # of a bank that large (>= SHORTLIST_MIN_ROWS rows, chosen by "auto" where bf16 is native) must take them
    from anomclip_hf.model.scoring import memory_patch_scores

    features, bank = [_unit(225, 16, 13).reshape(1, 225, 16)], _unit(5000, 16, 14)
    with torch.inference_mode():
        held_out = bank[torch.arange(5000) != 3]
        shortlisted = memory_patch_scores(features, [held_out], search="shortlist")
        exact = memory_patch_scores(features, [held_out], search="exact")
    assert float((shortlisted - exact).abs().max()) < 1e-6
