"""Category adapters on the Hub, through the real huggingface_hub client and a loopback fake Hub (fake_hub.py):
push, load by repo id, revisions, the cache, offline use, model cards, and the refusal of unsafe input."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import perturb_norms, tiny_clip_config
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from transformers import CLIPModel

from anomclip_hf import AnomCLIPModel, AnomCLIPProcessor
from anomclip_hf.hub import CategoryDownloadError, repo_id_from_pattern
from anomclip_hf.model.category_io import LAYOUT_FILES
from anomclip_hf.model.publishing import upload_category_folder
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

REPO = "tester/anomclip-mvtec-widget-2shot"
EVALUATION = {"dataset": "mvtec", "resolution": 64, "test_images": 12,
              "metrics": {"image_auroc": 0.9375, "pixel_auroc": 0.8125, "aupro": 0.7125}}


def _image(seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(30, 30, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def _fresh(tiny_clip) -> AnomCLIPModel:
    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))


@pytest.fixture
def trained(tiny_model):
    """A category with learned prompt vectors, a memory bank and the records training and evaluation keep."""
    tiny_model.config.base_model_name_or_path = "openai/clip-vit-base-patch16"  # a Hub id for the card
    state = tiny_model.add_category("widget", reference_images=[_image(0), _image(1)], learned_prompts=True, seed=3)
    with torch.no_grad():
        tiny_model.prompt_parameters()[0].add_(0.05 * torch.randn(tiny_model.prompt_parameters()[0].shape))
    tiny_model.clear_prototype_cache()
    state.metadata.update(
        reference_files=["widget/train/good/000.png", "widget/train/good/003.png"], evaluation=EVALUATION,
        training={"dataset": "mvtec", "shot_seed": 4, "prompt_seed": 3, "preset": "paper", "schedule": "two_stage",
                  "epochs": 4, "stage_epochs": {"stage1": 2, "stage2": 2}, "final_losses": {"stage2": 0.5},
                  "config": {"lr": 0.002, "momentum": 0.9, "weight_decay": 0.0005, "min_lr": 1e-5}})
    return tiny_model


def _scores(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values)
    return out.image_scores, out.anomaly_maps


def _file_requests(hub) -> list[str]:
    return [path for method, path in hub.requests if "/resolve/" in path and method == "GET"]


def test_push_then_load_by_repo_id_gives_identical_scores_and_a_parsable_card(fake_hub, trained, tiny_clip):
    pixel_values = torch.randn(3, 3, 30, 30)
    expected = _scores(trained, pixel_values)
    commit = trained.push_category_to_hub(REPO)

    files = fake_hub.files(REPO)
    assert sorted(files) == sorted((".gitattributes",) + LAYOUT_FILES)
    assert commit.oid == fake_hub.repos[REPO].branches["main"]

    fresh = _fresh(tiny_clip)
    state = fresh.load_category(REPO)
    assert state.name == "widget" and fresh.active_category == "widget" and state.shots == 2
    image_scores, maps = _scores(fresh, pixel_values)
    assert torch.equal(image_scores, expected[0]) and torch.equal(maps, expected[1])
    assert sorted(path.rsplit("/", 1)[-1] for path in _file_requests(fake_hub)) == sorted(
        name for name in LAYOUT_FILES)

    card = ModelCard(files["README.md"].decode())
    data = card.data
    assert data.library_name == "anomclip-hf" and data.base_model == "openai/clip-vit-base-patch16"
    assert data.license == "cc-by-nc-sa-4.0" and data.datasets == ["mvtec-ad"]
    assert set(data.tags) == {"anomaly-detection", "few-shot", "clip", "promptad"}
    results = {r.metric_type: r for r in data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == EVALUATION["metrics"]
    first = results["image_auroc"]
    assert (first.dataset_type, first.dataset_name, first.dataset_config, first.dataset_split) == (
        "mvtec", "MVTec AD", "widget", "test")
    assert first.dataset_args == {"shots": 2, "seeds": [4], "resolution": 64}
    assert f'model.load_category("{REPO}")' in card.text
    assert "widget/train/good/003.png" in card.text and "two_stage" in card.text
    assert "CC BY-NC-SA 4.0" in card.text
    record = json.loads(files["category.json"])
    assert record["base_model"]["fingerprint"] == fresh.base_identity()["fingerprint"]
    assert record["base_model"]["architecture"]["vision_hidden_size"] == 32


def test_revisions_pin_branches_and_the_cache_is_reused(fake_hub, trained, tiny_clip):
    pixel_values = torch.randn(2, 3, 30, 30)
    first_scores = _scores(trained, pixel_values)
    first = trained.push_category_to_hub(REPO).oid
    with torch.no_grad():
        trained.prompt_parameters()[0].mul_(-1.0)
    trained.clear_prototype_cache()
    second_scores = _scores(trained, pixel_values)
    second = trained.push_category_to_hub(REPO, commit_message="second try").oid
    assert first != second and not torch.equal(first_scores[0], second_scores[0])

    fresh = _fresh(tiny_clip)
    fresh.load_category(REPO, revision=first)
    assert torch.equal(_scores(fresh, pixel_values)[0], first_scores[0])
    fresh.load_category(REPO)
    assert torch.equal(_scores(fresh, pixel_values)[0], second_scores[0])

    fake_hub.requests.clear()
    fresh.load_category(REPO, revision=first)  # a commit sha in the cache: no request at all
    assert fake_hub.requests == []
    fresh.load_category(REPO)  # a branch: one revision look-up, no file transfer
    assert _file_requests(fake_hub) == [] and len(fake_hub.requests) == 1

    # A push to a (new) branch leaves main alone; an unchanged adapter makes no empty commit.
    assert trained.push_category_to_hub(REPO).oid == second
    with torch.no_grad():
        trained.prompt_parameters()[0].add_(0.1)
    trained.clear_prototype_cache()
    branch_scores = _scores(trained, pixel_values)
    branch = trained.push_category_to_hub(REPO, revision="experiment").oid
    assert fake_hub.repos[REPO].branches == {"main": second, "experiment": branch}
    fresh.load_category(REPO, revision="experiment")
    assert torch.equal(_scores(fresh, pixel_values)[0], branch_scores[0])
    with pytest.raises(CategoryDownloadError, match="has no revision 'nope'"):
        fresh.load_category(REPO, revision="nope")


def test_private_push_needs_the_token(tiny_clip, trained, fake_hub):
    fake_hub.token = "hf_fake_token"
    with pytest.raises(HfHubHTTPError, match="401|Invalid credentials") as refused:
        trained.push_category_to_hub(REPO, private=True)
    assert refused.value.response.status_code == 401
    trained.push_category_to_hub(REPO, private=True, token="hf_fake_token")
    assert fake_hub.repos[REPO].private
    fresh = _fresh(tiny_clip)
    with pytest.raises(CategoryDownloadError, match="was not found"):
        fresh.load_category(REPO)
    assert fresh.load_category(REPO, token="hf_fake_token").name == "widget"


def test_offline_loads_from_the_cache_and_fails_clearly_without_it(fake_hub, trained, tiny_clip, monkeypatch):
    commit = trained.push_category_to_hub(REPO).oid
    trained.push_category_to_hub("tester/never-downloaded")
    _fresh(tiny_clip).load_category(REPO)  # fills the cache

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake_hub.requests.clear()
    fresh = _fresh(tiny_clip)
    assert fresh.load_category(REPO).name == "widget"
    assert fresh.load_category(REPO, revision=commit).name == "widget"
    with pytest.raises(CategoryDownloadError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        fresh.load_category("tester/never-downloaded")
    assert fake_hub.requests == []


def test_offline_environment_variable_in_a_new_process(fake_hub, trained, tmp_path):
    trained.push_category_to_hub(REPO)
    code = ("import sys; sys.path.insert(0, 'tests/helpers');"
            "from tiny_models import perturb_norms, tiny_clip_config; import torch;"
            "from transformers import CLIPModel; from anomclip_hf import AnomCLIPModel;"
            "from anomclip_hf.model.tokenization import build_offline_clip_tokenizer;"
            "torch.manual_seed(0); clip = perturb_norms(CLIPModel(tiny_clip_config())).eval();"
            "model = AnomCLIPModel.from_clip(clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False));"
            f"print(model.load_category({REPO!r}).name)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE,
           "HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
    repo_root = Path(__file__).resolve().parents[2]
    run = lambda: subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True,
                                 text=True, timeout=300)
    missing = run()
    assert missing.returncode != 0 and "is not in the Hugging Face cache" in missing.stderr
    AnomCLIPModel.from_clip(trained.clip, tokenizer=trained.tokenizer).load_category(REPO)  # online: fills the cache
    cached = run()
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert cached.stdout.strip() == "widget"


# ------------------------------------------------------------------------------------------- unsafe input
@pytest.fixture
def adapter_dir(tmp_path, trained):
    return Path(trained.save_category(tmp_path / "adapter"))


def _assert_nothing_loaded(model):
    assert model.categories == []


def test_truncated_adapter_file_is_refused(adapter_dir, tiny_clip):
    weights = adapter_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    fresh = _fresh(tiny_clip)
    with pytest.raises(ValueError, match="adapter_model.safetensors is not a readable safetensors file"):
        fresh.load_category(str(adapter_dir))
    _assert_nothing_loaded(fresh)


def test_missing_category_json_is_refused(adapter_dir, tiny_clip, fake_hub):
    (adapter_dir / "category.json").unlink()
    fresh = _fresh(tiny_clip)
    with pytest.raises(ValueError, match=r"missing \['category.json'\]"):
        fresh.load_category(str(adapter_dir))
    with pytest.raises(ValueError, match=r"missing \['category.json'\]"):
        upload_category_folder(str(adapter_dir), REPO)
    assert fake_hub.requests == []  # checked before any request
    _assert_nothing_loaded(fresh)


def test_category_for_another_base_names_both_sides(fake_hub, trained):
    trained.push_category_to_hub(REPO)
    torch.manual_seed(1)
    other = AnomCLIPModel.from_clip(perturb_norms(CLIPModel(tiny_clip_config()), seed=1),
                                    tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    with pytest.raises(ValueError, match="adapter was made for base model") as error:
        other.load_category(REPO)
    message = str(error.value)
    assert trained.base_identity()["fingerprint"] in message and other.base_identity()["fingerprint"] in message
    assert "openai/clip-vit-base-patch16" in message and REPO in message
    _assert_nothing_loaded(other)


def test_newer_format_asks_for_an_upgrade(adapter_dir, tiny_clip):
    record = json.loads((adapter_dir / "category.json").read_text())
    record["format_version"] = 99
    (adapter_dir / "category.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="format_version 99, made by a newer anomclip-hf.*upgrade"):
        _fresh(tiny_clip).load_category(str(adapter_dir))


class _Exploit:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_repo_with_only_a_pickled_adapter_is_refused_and_never_downloaded(fake_hub, adapter_dir, tiny_clip, tmp_path):
    marker = tmp_path / "unpickled"
    fake_hub.put_files("tester/pickled", {
        "adapter_config.json": (adapter_dir / "adapter_config.json").read_bytes(),
        "category.json": (adapter_dir / "category.json").read_bytes(),
        "adapter_model.bin": pickle.dumps(_Exploit(marker))})
    fresh = _fresh(tiny_clip)
    with pytest.raises(ValueError, match=r"holds \['adapter_model.bin'\].*reads only safetensors"):
        fresh.load_category("tester/pickled")
    assert not marker.exists()
    assert not any("adapter_model.bin" in path for _, path in fake_hub.requests if "/resolve/" in path)
    cached = [p.name for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.is_file()]
    assert "adapter_model.bin" not in cached
    _assert_nothing_loaded(fresh)


def test_unsafe_category_names_and_repo_ids_touch_nothing(fake_hub, trained, adapter_dir, tmp_path, tiny_clip):
    before = sorted(p.name for p in tmp_path.iterdir())
    fresh = _fresh(tiny_clip)
    with pytest.raises(ValueError, match=r"category name '\.\./x' is not allowed"):
        fresh.load_category(str(adapter_dir), name="../x")
    # a category.json that names one
    record = json.loads((adapter_dir / "category.json").read_text())
    record["category"] = "../x"
    (adapter_dir / "category.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"category.json field 'category' is '\.\./x'; expected 1-96 letters"):
        fresh.load_category(str(adapter_dir))
    _assert_nothing_loaded(fresh)
    # a category with a path in its name is refused when it is made, and (renamed afterwards) before a
    # folder or a request is made
    with pytest.raises(ValueError, match="category name 'a/b' is not allowed"):
        trained.add_category("a/b", reference_images=[_image(5)])
    assert "a/b" not in trained.categories
    trained.get_category("widget").name = "a/b"
    target = tmp_path / "out" / "adapter"
    with pytest.raises(ValueError, match="category name 'a/b' is not allowed"):
        trained.save_category(target)
    with pytest.raises(ValueError, match="is not allowed"):
        trained.push_category_to_hub(REPO)
    trained.get_category("widget").name = "widget"
    for bad in ("", "a/b/c", "../x", "x--y", "/abs/path"):
        with pytest.raises(ValueError, match="Hub repo id .* is not valid"):
            trained.push_category_to_hub(bad, name="widget")
    with pytest.raises(ValueError, match="does not exist"):
        fresh.load_category("../x")
    with pytest.raises(ValueError, match="neither an existing category adapter folder nor a valid Hub repo id"):
        fresh.load_category("x--y")
    assert fake_hub.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    for pattern, fields, message in (("{org}/anomclip-{category}", {"org": "o", "category": "../x"}, "not allowed"),
                                     ("{org}/anomclip-{category}", {"category": "bottle"}, "needs a value for"),
                                     ("{user}/x", {}, "unknown field"), ("{org/x", {"org": "o"}, "malformed")):
        with pytest.raises(ValueError, match=message):
            repo_id_from_pattern(pattern, **fields)
    assert repo_id_from_pattern("{org}/anomclip-{dataset}-{category}-{shots}shot", org="me", dataset="mvtec",
                                category="metal_nut", shots=4) == "me/anomclip-mvtec-metal_nut-4shot"


def test_interrupted_save_keeps_the_previous_adapter_loadable(adapter_dir, trained, tiny_clip, monkeypatch):
    import anomclip_hf.model.category_io as category_io

    before = {p.name: p.read_bytes() for p in adapter_dir.iterdir()}
    calls = []

    def failing_save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # after the adapter weights, in the middle of the folder
            raise OSError("disk full")
        return save_file(tensors, path, *args, **kwargs)

    from safetensors.torch import save_file

    monkeypatch.setattr(category_io, "save_file", failing_save_file)
    with torch.no_grad():
        trained.prompt_parameters()[0].add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        trained.save_category(adapter_dir)
    assert {p.name: p.read_bytes() for p in adapter_dir.iterdir()} == before
    assert sorted(p.name for p in adapter_dir.parent.iterdir()) == ["adapter"]  # no staging folder left
    assert _fresh(tiny_clip).load_category(str(adapter_dir)).name == "widget"


def test_base_model_push_with_processor_and_card_loads_back(fake_hub, tiny_model):
    from anomclip_hf import AnomCLIPProcessor
    from anomclip_hf.model.publishing import push_base_to_hub

    tiny_model.config.base_model_name_or_path = "openai/clip-vit-base-patch16"
    push_base_to_hub(tiny_model, "tester/anomclip-base", license="mit")
    files = fake_hub.files("tester/anomclip-base")
    assert {"config.json", "model.safetensors", "anomclip_processor_config.json", "README.md",
            "tokenizer_config.json"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "anomclip-hf" and card.data.base_model == "openai/clip-vit-base-patch16"
    assert card.data.license == "mit" and "promptad" in card.data.tags
    assert 'AnomCLIPModel.from_pretrained("tester/anomclip-base")' in card.text

    reloaded = AnomCLIPModel.from_pretrained("tester/anomclip-base")
    processor = AnomCLIPProcessor.from_pretrained("tester/anomclip-base")
    assert reloaded.config.prompt_token_ids == tiny_model.config.prompt_token_ids
    assert processor.image_size == 30 and reloaded.tokenizer is not None
    pixel_values = processor(images=[_image(7)])["pixel_values"]
    for model in (tiny_model, reloaded):  # each builds its own memory bank: equal up to float rounding
        model.add_category("widget", reference_images=[_image(0)])
    assert torch.allclose(_scores(reloaded, pixel_values)[0], _scores(tiny_model, pixel_values)[0], atol=1e-6)


def test_cli_push(fake_hub, adapter_dir, tmp_path, capsys, tiny_clip):
    from anomclip_hf.cli import main

    assert main(["push", "--category", str(adapter_dir), "--repo-id", REPO, "--commit-message", "from the CLI"]) == 0
    head = fake_hub.repos[REPO].branches["main"]
    assert head in capsys.readouterr().out
    assert fake_hub.repos[REPO].commits[head].message == "from the CLI"
    files = fake_hub.files(REPO)
    assert sorted(files) == sorted((".gitattributes",) + LAYOUT_FILES)
    assert files["adapter_model.safetensors"] == (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert str(tmp_path) not in files["README.md"].decode()  # the card names the repo, not the local folder
    assert _fresh(tiny_clip).load_category(REPO).name == "widget"

    requests = len(fake_hub.requests)
    capsys.readouterr()
    assert main(["push", "--category", str(tmp_path / "missing"), "--repo-id", REPO]) == 2
    assert re.match(r"anomclip push: error: category adapter folder .*missing does not exist", capsys.readouterr().err)
    assert main(["push", "--category", str(adapter_dir), "--repo-id", "not/a/repo"]) == 2
    assert "Hub repo id 'not/a/repo' is not valid" in capsys.readouterr().err
    assert len(fake_hub.requests) == requests


def _train_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).resolve().parents[2] / "training"
                                                  / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_pushes_each_job_and_a_rerun_pushes_only_what_is_missing(fake_hub, tiny_model, tmp_path, capsys):
    from anomclip_hf.data import generate_mvtec_tree

    base = str(tmp_path / "base")
    tiny_model.save_pretrained(base)
    data = generate_mvtec_tree(str(tmp_path / "data"), categories=("widget",), n_train=3, n_test_good=1,
                               n_test_defect=1, image_size=32)
    out = tmp_path / "out"
    script = _train_script()
    common = ["--base", base, "--dataset", "mvtec", "--data-root", data, "--category", "widget", "--shots", "2",
              "--output-dir", str(out), "--epochs", "2", "--checkpoint-every", "0", "--trackers", "none",
              "--no-progress", "--push-to-hub", "--hub-org", "tester"]

    # The default pattern has no {seed}: two seeds would share a repo, refused before anything is trained.
    assert script.main(common + ["--seeds", "0", "1"]) == 2
    assert "same repo 'tester/anomclip-mvtec-widget-2shot'" in capsys.readouterr().err and not out.exists()

    assert script.main(common + ["--seeds", "0"]) == 0
    repo = "tester/anomclip-mvtec-widget-2shot"
    head = fake_hub.repos[repo].branches["main"]
    assert f"-> {repo} ({head[:12]})" in capsys.readouterr().out
    summary = json.loads((out / "mvtec" / "widget" / "2shot" / "seed0" / "summary.json").read_text())
    assert (summary["hub_repo_id"], summary["hub_commit"]) == (repo, head)
    record = json.loads(fake_hub.files(repo)["category.json"])
    assert record["reference_files"] == summary["reference_files"] and record["training"]["epochs"] == 2
    card = ModelCard(fake_hub.files(repo)["README.md"].decode())
    assert all(name in card.text for name in summary["reference_files"])

    # A finished job is not trained again; a new target gets it pushed, an unchanged one makes no request.
    pattern = ["--hub-repo-id", "{org}/widget-{shots}shot-seed{seed}"]
    assert script.main(common + ["--seeds", "0"] + pattern) == 0
    assert "skipped" in capsys.readouterr().out and "tester/widget-2shot-seed0" in fake_hub.repos
    requests = len(fake_hub.requests)
    assert script.main(common + ["--seeds", "0"] + pattern) == 0
    assert len(fake_hub.requests) == requests

    args = script.build_parser().parse_args(["--base", "b", "--data-root", "d", "--category", "c", "--output-dir",
                                             "o", "--hub-repo-id", "x/y"])
    with pytest.raises(ValueError, match="--hub-repo-id is given without --push-to-hub"):
        script.hub_target_from_args(args)


def test_cli_predict_by_repo_id_at_a_revision(fake_hub, trained, tiny_clip, tmp_path, capsys):
    import csv

    from anomclip_hf.cli import main

    first = trained.push_category_to_hub(REPO).oid
    with torch.no_grad():
        trained.prompt_parameters()[0].mul_(-1.0)
    trained.clear_prototype_cache()
    trained.push_category_to_hub(REPO, commit_message="second")
    trained.save_pretrained(tmp_path / "base")
    images = tmp_path / "images"
    images.mkdir()
    for seed in (5, 6):
        _image(seed).save(images / f"img{seed}.png")
    expected = {}
    for revision in (first, None):
        fresh = _fresh(tiny_clip)
        fresh.load_category(REPO, revision=revision)
        with torch.no_grad():
            out = fresh(AnomCLIPProcessor.from_model(fresh)(images=sorted(images.iterdir()))["pixel_values"])
        expected[revision] = out.image_scores.numpy()
    for revision in (first, None):
        out_dir = tmp_path / f"pred-{revision}"
        args = ["predict", "--base", str(tmp_path / "base"), "--category", REPO, "--images", str(images),
                "--output", str(out_dir), "--threshold", "0.5", "--quiet"]
        assert main(args + (["--revision", revision] if revision else [])) == 0
        with open(out_dir / "scores.csv", newline="") as handle:
            scores = [float(row["image_score"]) for row in csv.DictReader(handle)]
        assert scores == pytest.approx(list(expected[revision]), abs=2e-6)
    assert not np.allclose(expected[first], expected[None])
