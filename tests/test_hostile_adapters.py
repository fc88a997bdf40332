"""Hostile category adapters (issue 14, adapters): one row per root cause, each refused with one ValueError that
names the file and the field, before the model changes. Every row loads its bad adapter under the name of an
already loaded good category ("widget"), so each also shows that a failed load changes nothing."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.category import MAX_SHOTS
from anomclip_hf.model.category_io import MEMORY_FILE, TENSOR_HEADER_SLACK
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

WEIGHT_KEY = "token_embedding.trainable_tokens_delta"
PATCHES, WIDTH, TOKENS = 225, 32, 24  # tiny CLIP: (30 / 2)^2 patches, width 32; 24 prompt tokens


def _fresh(tiny_clip) -> AnomCLIPModel:
    return AnomCLIPModel.from_clip(tiny_clip, tokenizer=build_offline_clip_tokenizer(real_vocab=False))


@pytest.fixture(scope="module")
def good_adapter(tiny_clip, tmp_path_factory) -> Path:
    """A learned category with a 3-shot memory bank and a leave-one-out threshold."""
    model = _fresh(tiny_clip)
    generator = torch.Generator().manual_seed(0)
    references = torch.randn(3, 3, 30, 30, generator=generator)
    model.add_category("widget", reference_images=references, learned_prompts=True, seed=2)
    model.estimate_thresholds(references)
    return Path(model.save_category(tmp_path_factory.mktemp("good") / "adapter"))


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def loaded(tiny_clip, good_adapter, pixel_values):
    """A model with the good "widget" loaded, and its scores."""
    model = _fresh(tiny_clip)
    model.load_category(str(good_adapter))
    return model, _scores(model, pixel_values)


def _scores(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values, category="widget")
    return out.image_scores.clone(), out.anomaly_maps.clone()


def _assert_unchanged(loaded, pixel_values):
    model, (image_scores, maps) = loaded
    assert model.categories == ["widget"] and model.prompt_tokens.adapter_names == ["widget"]
    now = _scores(model, pixel_values)
    assert torch.equal(now[0], image_scores) and torch.equal(now[1], maps)
    assert model.get_category("widget").metadata["decision_threshold"] is not None


# ------------------------------------------------------------------------------------------- mutations
def _edit_record(**changes):
    def mutate(folder: Path):
        record = json.loads((folder / "category.json").read_text())
        record.update(changes)
        (folder / "category.json").write_text(json.dumps(record))  # NaN/Infinity as Python's json writes them
    return mutate


def _edit_tensors(filename, edit):
    def mutate(folder: Path):
        tensors = load_file(str(folder / filename))
        edit(tensors)
        save_file(tensors, str(folder / filename))
    return mutate


def _set(key, index, value):
    def edit(tensors):
        tensors[key][index] = value
    return edit


def _replace(key, tensor):
    def edit(tensors):
        tensors[key] = tensor
    return edit


def _remove(filename):
    return lambda folder: (folder / filename).unlink()


def _write(filename, data: bytes):
    return lambda folder: (folder / filename).write_bytes(data)


def _link(filename, target):
    def mutate(folder: Path):
        (folder / filename).unlink()
        os.symlink(target, folder / filename)
    return mutate


def _link_outside(filename):
    """A valid copy of the file, outside the folder, reached through a link."""
    def mutate(folder: Path):
        outside = folder.parent / f"outside-{filename}"
        shutil.copy(folder / filename, outside)
        (folder / filename).unlink()
        os.symlink(outside, folder / filename)
    return mutate


def _fifo(filename):
    def mutate(folder: Path):
        (folder / filename).unlink()
        os.mkfifo(folder / filename)
    return mutate


def _sparse(filename, size):
    """A file of `size` bytes that takes no disk space (and is never read)."""
    def mutate(folder: Path):
        with open(folder / filename, "wb") as handle:
            handle.truncate(size)
    return mutate


def _claims_huge_shape(folder: Path):
    """A small file whose header claims a (MAX_SHOTS * 4, 225, 32) layer."""
    header = {"layer_0": {"dtype": "F32", "shape": [MAX_SHOTS * 4, PATCHES, WIDTH], "data_offsets": [0, 4 * 10 ** 9]},
              "layer_1": {"dtype": "F32", "shape": [1], "data_offsets": [4 * 10 ** 9, 4 * 10 ** 9 + 4]}}
    text = json.dumps(header).encode()
    (folder / MEMORY_FILE).write_bytes(len(text).to_bytes(8, "little") + text + b"\0" * 64)


def _nested(depth):
    value = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _deep_json_text(folder: Path):
    (folder / "category.json").write_text("[" * 100_000 + "]" * 100_000)


MEMORY_LIMIT = 4 * MAX_SHOTS * PATCHES * WIDTH * 2 + TENSOR_HEADER_SLACK  # two memory layers
NAN, INF = float("nan"), float("inf")

# id -> (mutation, [fragments the message must contain: the file, the field, what was expected])
ROWS = {
    # loaded, then scored silently wrong
    "nan_in_memory_bank": (_edit_tensors(MEMORY_FILE, _set("layer_0", (0, 3, 1), NAN)),
                           ["memory_bank.safetensors", "'layer_0'", "1 NaN or infinite values"]),
    "inf_in_prototypes": (_edit_tensors("text_prototypes.safetensors", _set("image", (1, 0), INF)),
                          ["text_prototypes.safetensors", "'image'", "NaN or infinite"]),
    "nan_in_prompt_vectors": (_edit_tensors("adapter_model.safetensors", _set(WEIGHT_KEY, (5, 2), NAN)),
                              ["adapter_model.safetensors", f"'{WEIGHT_KEY}'", "NaN or infinite"]),
    "wrong_patch_count": (_edit_tensors(MEMORY_FILE, lambda t: t.update(
        {k: v[:, :-1].contiguous() for k, v in list(t.items())})),
        ["memory_bank.safetensors", "'layer_0'", "(3, 224, 32)", "expected (3, 225, 32)", "225 patches"]),
    "layers_of_different_k": (_edit_tensors(MEMORY_FILE, lambda t: t.update(layer_1=t["layer_1"][:2].clone())),
                              ["memory_bank.safetensors", "'layer_1'", "(2, 225, 32)", "expected (3, 225, 32)",
                               "k = shots 3"]),
    "memory_bank_float16": (_edit_tensors(MEMORY_FILE, lambda t: t.update(layer_0=t["layer_0"].half())),
                            ["memory_bank.safetensors", "'layer_0'", "torch.float16", "expected torch.float32"]),
    "memory_bank_extra_tensor": (_edit_tensors(MEMORY_FILE, _replace("layer_9", torch.zeros(3, PATCHES, WIDTH))),
                                 ["memory_bank.safetensors", "'layer_9'", "expected exactly ['layer_0', 'layer_1']"]),
    "missing_memory_bank_with_shots": (_remove(MEMORY_FILE),
                                       ["category.json field 'shots' is 3", "memory_bank.safetensors is missing"]),
    "memory_bank_with_zero_shots": (_edit_record(shots=0),
                                    ["category.json field 'shots' is 0", "memory_bank.safetensors"]),
    "estimated_threshold_without_memory": (lambda f: (_remove(MEMORY_FILE)(f), _edit_record(shots=0)(f)),
                                           ["category.json field 'threshold_estimate'", "memory_bank.safetensors"]),
    "decision_threshold_nan": (_edit_record(decision_threshold=NAN),
                               ["category.json field 'decision_threshold' is nan", "at most 2"]),
    "decision_threshold_inf": (_edit_record(decision_threshold=INF),
                               ["category.json field 'decision_threshold' is inf", "a number greater than 0"]),
    "decision_threshold_string": (_edit_record(decision_threshold="0.5"),
                                  ["category.json field 'decision_threshold' is '0.5'", "null or a number"]),
    "decision_threshold_list": (_edit_record(decision_threshold=[0.5]),
                                ["category.json field 'decision_threshold' is a list [0.5]", "null or a number"]),
    "decision_threshold_bool": (_edit_record(decision_threshold=True),
                                ["category.json field 'decision_threshold' is True", "null or a number"]),
    "decision_threshold_zero": (_edit_record(decision_threshold=0),
                                ["category.json field 'decision_threshold' is 0", "greater than 0"]),
    "pixel_threshold_negative": (_edit_record(pixel_threshold=-0.5),
                                 ["category.json field 'pixel_threshold' is -0.5", "greater than 0"]),
    "empty_weights_file": (_write("adapter_model.safetensors", b""),
                           ["adapter_model.safetensors is empty (0 bytes)"]),
    # loaded, then crashed with a traceback
    "wrong_prompt_vector_rows": (_edit_tensors("adapter_model.safetensors",
                                               lambda t: t.update({WEIGHT_KEY: t[WEIGHT_KEY][:-1].clone()})),
                                 ["adapter_model.safetensors", f"'{WEIGHT_KEY}'", "(23, 32)", f"expected ({TOKENS}, 32)"]),
    "prompt_layout_a_list": (_edit_record(prompt_layout=[]),
                             ["category.json field 'prompt_layout' is a list []", "expected a JSON object"]),
    "base_model_null": (_edit_record(base_model=None),
                        ["category.json field 'base_model' is None", "expected a JSON object"]),
    "memory_a_string": (_edit_record(memory="layers"),
                        ["category.json field 'memory' is 'layers'", "null or a JSON object"]),
    "training_a_number": (_edit_record(training=5), ["category.json field 'training' is 5", "a JSON object"]),
    "phrases_a_string": (_edit_record(phrases="{} with a dent"),
                         ["category.json field 'phrases'", "a list of 1 to 1024 items"]),
    "no_phrases": (_edit_record(phrases=[]), ["category.json field 'phrases' is a list []", "1 to 1024 items"]),
    "phrase_format_attack": (_edit_record(phrases=["{0.__class__} dent"]),
                             ["category.json field 'phrases[0]'", "exactly one '{}'"]),
    "class_name_too_long": (_edit_record(class_name="x" * 300),
                            ["category.json field 'class_name'", "a string of 1 to 256 characters"]),
    "shots_over_the_maximum": (_edit_record(shots=MAX_SHOTS + 1),
                               ["category.json field 'shots' is 1025", "an integer from 0 to 1024"]),
    "missing_field": (lambda f: _edit_json(f, lambda r: r.pop("shots")),
                      ["category.json field 'shots' is missing"]),
    "unknown_field": (_edit_record(run_this="rm -rf"), ["category.json field 'run_this'", "unknown field"]),
    "adapter_config_token_indices_a_number": (lambda f: _edit_json(f, lambda c: c.update(token_indices=7),
                                                                   "adapter_config.json"),
                                              ["adapter_config.json", "TrainableTokens config"]),
    "deep_nesting_in_a_record": (_edit_record(training=_nested(50)),
                                 ["category.json field 'training.x.x.x.x.x.x.x.x' is a dict", "at most 8 levels of nesting"]),
    "deep_nesting_past_the_parser": (_deep_json_text, ["category.json is nested too deeply"]),
    # files that are not what they claim to be
    "category_json_links_to_dev_zero": (_link("category.json", "/dev/zero"),
                                        ["category.json is a link to /dev/zero, outside"]),
    "category_json_is_a_fifo": (_fifo("category.json"), ["category.json is a FIFO (named pipe)"]),
    "memory_bank_links_outside": (_link_outside(MEMORY_FILE),
                                  ["memory_bank.safetensors is a link to", "outside-memory_bank.safetensors, outside"]),
    "memory_bank_over_the_size_limit": (_sparse(MEMORY_FILE, MEMORY_LIMIT + 1),
                                        ["memory_bank.safetensors", f"has {MEMORY_LIMIT + 1} bytes",
                                         f"at most {MEMORY_LIMIT}"]),
    "memory_bank_header_claims_a_huge_shape": (_claims_huge_shape,
                                               ["memory_bank.safetensors is not a readable safetensors file"]),
    "category_json_over_the_size_limit": (_sparse("category.json", (4 << 20) + 1),
                                          ["category.json has 4194305 bytes; at most 4194304"]),
}


def _edit_json(folder: Path, edit, filename="category.json"):
    data = json.loads((folder / filename).read_text())
    edit(data)
    (folder / filename).write_text(json.dumps(data))


def _alarm(seconds):
    """Fail (instead of hanging) if a read blocks: a FIFO opened without O_NONBLOCK."""
    def timeout(*_):
        raise TimeoutError(f"loading the adapter blocked for {seconds} s")
    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)


def _bad_adapter(good_adapter: Path, tmp_path: Path, row: str) -> Path:
    folder = tmp_path / "bad" / "adapter"
    shutil.copytree(good_adapter, folder)
    ROWS[row][0](folder)
    return folder


@pytest.mark.parametrize("row", list(ROWS))
def test_hostile_adapter_is_refused_and_changes_nothing(row, good_adapter, loaded, pixel_values, tmp_path):
    folder = _bad_adapter(good_adapter, tmp_path, row)
    model = loaded[0]
    _alarm(20)
    try:
        with pytest.raises(ValueError) as error:
            model.load_category(str(folder))
    finally:
        signal.alarm(0)
    message = str(error.value)
    assert message.startswith(f"{folder}: "), message  # names the adapter ...
    for fragment in ROWS[row][1]:  # ... the file, the field and what was expected
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    _assert_unchanged(loaded, pixel_values)


def test_the_good_adapter_and_its_limits(good_adapter, loaded, tiny_clip):
    # Control: the rows above start from an adapter that loads, scores and keeps its threshold.
    fresh = _fresh(tiny_clip)
    state = fresh.load_category(str(good_adapter))
    assert state.shots == 3 and state.metadata["decision_threshold"] > 0
    expected = fresh.adapter_expectations()
    assert expected.size_limit(MEMORY_FILE) == MEMORY_LIMIT
    assert expected.size_limit("adapter_model.safetensors") == 4 * TOKENS * 32 + TENSOR_HEADER_SLACK
    assert os.path.getsize(good_adapter / MEMORY_FILE) <= MEMORY_LIMIT
    # A link inside the folder is fine.
    linked = good_adapter.parent / "linked"
    shutil.copytree(good_adapter, linked)
    (linked / "category.json").rename(linked / "record.json")
    os.symlink("record.json", linked / "category.json")
    assert _fresh(tiny_clip).load_category(str(linked)).shots == 3


def test_a_category_holds_at_most_max_shots(tiny_model):
    with pytest.raises(ValueError, match=f"{MAX_SHOTS + 1} reference images; a category holds at most {MAX_SHOTS}"):
        tiny_model.add_category("widget", reference_images=_fake_features(MAX_SHOTS + 1))
    assert tiny_model.categories == [] and tiny_model.prompt_tokens.adapter_names == []


def test_saving_refuses_a_record_that_would_not_load(tiny_model, tmp_path):
    state = tiny_model.add_category("widget")
    state.metadata["decision_threshold"] = float("nan")
    with pytest.raises(ValueError, match=r"adapter: category.json field 'decision_threshold' is nan; expected null"):
        tiny_model.save_category(tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def _fake_features(k):
    from anomclip_hf.model.vv_attention import VisionFeatures

    return VisionFeatures(torch.zeros(k, 16), torch.zeros(k, PATCHES, 16), [torch.zeros(k, PATCHES, WIDTH)] * 2)


def test_failure_inside_peft_keeps_the_old_category_and_leaves_no_orphan(good_adapter, loaded, pixel_values,
                                                                          monkeypatch):
    import anomclip_hf.model.prompt_learner as prompt_learner

    def corrupt_then_fail(module, state, adapter_name):
        with torch.no_grad():
            module.vectors(adapter_name).fill_(float("nan"))
        raise RuntimeError("simulated failure inside set_peft_model_state_dict")

    monkeypatch.setattr(prompt_learner, "set_peft_model_state_dict", corrupt_then_fail)
    model = loaded[0]
    for name in ("widget", "gadget"):  # the same name as a loaded category, and a new one
        with pytest.raises(RuntimeError, match="simulated failure"):
            model.load_category(str(good_adapter), name=name)
        _assert_unchanged(loaded, pixel_values)


# ------------------------------------------------------------------------------------------- entry points
@pytest.fixture(scope="module")
def base_folder(tiny_clip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "base"
    _fresh(tiny_clip).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("row", ["decision_threshold_string", "category_json_is_a_fifo", "nan_in_memory_bank"])
def test_cli_predict_with_a_bad_category_says_one_line(row, good_adapter, base_folder, tmp_path, capsys):
    from PIL import Image

    from anomclip_hf.cli import main

    folder = _bad_adapter(good_adapter, tmp_path, row)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (30, 30), (90, 120, 30)).save(images / "a.png")
    _alarm(60)
    try:
        code = main(["predict", "--base", str(base_folder), "--category", str(folder), "--images", str(images),
                     "--output", str(tmp_path / "out"), "--quiet"])
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"anomclip predict: error: {folder}: ")
    assert all(fragment in lines[0] for fragment in ROWS[row][1])
    assert not (tmp_path / "out" / "scores.csv").exists()


def test_pipeline_with_a_bad_category_refuses_and_changes_nothing(good_adapter, loaded, pixel_values, tmp_path):
    from PIL import Image

    folder = _bad_adapter(good_adapter, tmp_path, "missing_memory_bank_with_shots")
    detector = pipeline("image-anomaly-detection", model=loaded[0])
    image = Image.new("RGB", (30, 30), (90, 120, 30))
    with pytest.raises(ValueError, match="category.json field 'shots' is 3 but memory_bank.safetensors is missing"):
        detector(image, category=str(folder))
    _assert_unchanged(loaded, pixel_values)
    assert 0.0 <= detector(image, category="widget")["score"] <= 1.0


# ------------------------------------------------------------------------------------------- Hub cache links
def test_hub_snapshot_links_into_the_repo_blobs_load_and_links_leaving_it_do_not(fake_hub, good_adapter, tiny_clip,
                                                                                 tmp_path):
    from anomclip_hf.hub import upload_category_folder

    repo = "tester/anomclip-widget"
    upload_category_folder(str(good_adapter), repo)
    fresh = _fresh(tiny_clip)
    assert fresh.load_category(repo).shots == 3  # every snapshot file is a link to ../../blobs/<hash>
    snapshots = list((tmp_path / "hf-cache").glob("models--tester--anomclip-widget/snapshots/*"))
    assert len(snapshots) == 1
    snapshot = snapshots[0]
    link = snapshot / MEMORY_FILE
    assert link.is_symlink() and os.readlink(link).startswith(os.path.join("..", "..", "blobs"))
    # A cached snapshot whose link leaves the repo folder (a valid file elsewhere) is refused, offline.
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(link, outside)
    link.unlink()
    os.symlink(outside, link)
    other = _fresh(tiny_clip)
    with pytest.raises(ValueError, match=rf"memory_bank.safetensors is a link to {outside}, outside .*"
                                         "models--tester--anomclip-widget"):
        other.load_category(repo, local_files_only=True)
    assert other.categories == [] and other.prompt_tokens.adapter_names == []


# --- issue 25: DINO memory ---
_DINO_GOLDEN = Path(__file__).parent / "golden" / "dino"


def _dino(tiny_clip, variant: str = "tiny_dinov2") -> AnomCLIPModel:
    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                   memory_backbone=str(_DINO_GOLDEN / variant), memory_image_size=112)


@pytest.fixture(scope="module")
def dino_adapter(tiny_clip, tmp_path_factory) -> Path:
    model = _dino(tiny_clip)
    model.add_category("widget", reference_images=[str(_DINO_GOLDEN / "images" / f"train_{i}.png") for i in range(2)])
    return Path(model.save_category(tmp_path_factory.mktemp("dino") / "widget"))


def test_dino_adapter_refuses_a_base_without_a_memory_backbone(tiny_clip, dino_adapter):
    model = _fresh(tiny_clip)
    with pytest.raises(ValueError, match=r"made with memory backbone '.*tiny_dinov2' \(dinov2.*this model's memory "
                                         r"backbone is none.*--memory-backbone .*tiny_dinov2"):
        model.load_category(dino_adapter)
    assert model.categories == []


def test_dino_adapter_refuses_another_memory_backbone(tiny_clip, dino_adapter):
    model = _dino(tiny_clip, "tiny_dinov2_reg")
    with pytest.raises(ValueError, match=r"made with memory backbone '.*tiny_dinov2' \(dinov2,.*this model's memory "
                                         r"backbone is '.*tiny_dinov2_reg' \(dinov2_with_registers"):
        model.load_category(dino_adapter)
    assert model.categories == []


def test_clip_memory_adapter_refuses_a_dino_base(tiny_clip, good_adapter):
    model = _dino(tiny_clip)
    with pytest.raises(ValueError, match=r"made with memory backbone none \(the CLIP memory\), but this model's memory "
                                         r"backbone is '.*tiny_dinov2'"):
        model.load_category(good_adapter)
    assert model.categories == []


@pytest.mark.parametrize("shape", [(2, 64, 24), (2, 49, 16)], ids=["width", "patch-grid"])
def test_dino_bank_of_another_width_or_grid_is_refused(tiny_clip, dino_adapter, tmp_path, shape):
    from safetensors.torch import save_file

    broken = tmp_path / "widget"
    shutil.copytree(dino_adapter, broken)
    save_file({"layer_1": torch.zeros(shape)}, str(broken / "memory_bank.safetensors"))
    model = _dino(tiny_clip)
    with pytest.raises(ValueError, match=r"memory_bank.safetensors tensor 'layer_1' has shape .*expected \(2, 64, 16\)"):
        model.load_category(broken)
    assert model.categories == []


def test_a_memory_backbone_that_is_not_dinov2_is_refused_by_name(tiny_clip, tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=28, patch_size=14)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"memory backbone .*vit: config.json has model_type 'vit'; the memory "
                                         r"backbone must be a DINOv2 model"):
        AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                memory_backbone=str(tmp_path / "vit"))
