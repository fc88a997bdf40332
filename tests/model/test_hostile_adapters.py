"""Hostile category adapters: one row per root cause, each refused with one ValueError that
names the file and the field, before the model changes. Every row loads its bad adapter under the name of an
already loaded good category ("widget"), so each also shows that a failed load changes nothing."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.category import MAX_SHOTS
from anomclip_hf.model.category_io import (
    ADAPTER_WEIGHTS,
    MEMORY_FILE,
    PROTOTYPES_FILE,
    TENSOR_HEADER_SLACK,
)
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer
from adapter_setup import PATCHES, WIDTH, assert_unchanged, fake_features, fresh_model, scores_of

WEIGHT_KEY = "token_embedding.trainable_tokens_delta"
TOKENS = 24  # prompt tokens of the tiny CLIP's category


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


def _scale(key, factor):
    def edit(tensors):
        tensors[key] = (tensors[key] * factor).contiguous()
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
                               ["category.json field 'shots' is 1025", "exact memory bank; expected at most 1024"]),
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
    # finite, of the right shape, and still scoring every image the same
    "huge_prompt_vectors_without_prototypes": (
        lambda f: (_remove(PROTOTYPES_FILE)(f), _edit_tensors(ADAPTER_WEIGHTS, _scale(WEIGHT_KEY, 1e30))(f)),
        ["adapter_model.safetensors (no stored prototypes)", "text prototypes computed from its prompt vectors",
         "head 'image'", "NaN or infinite"]),
    "memory_bank_scaled_up": (_edit_tensors(MEMORY_FILE, _scale("layer_0", 1e30)),
                              ["memory_bank.safetensors tensor 'layer_0'", "675 of 675 rows that are not unit vectors",
                               "norm 1e+30", "expected L2 norm 1"]),
    "memory_bank_of_zeros": (_edit_tensors(MEMORY_FILE, _scale("layer_1", 0.0)),
                             ["memory_bank.safetensors tensor 'layer_1'", "norm 0", "expected L2 norm 1"]),
    "prototypes_scaled_down": (_edit_tensors(PROTOTYPES_FILE, _scale("image", 1e-30)),
                               ["text_prototypes.safetensors tensor 'image'", "norm 1e-30", "expected L2 norm 1"]),
    "prototypes_normal_equals_anomaly": (_edit_tensors(PROTOTYPES_FILE, lambda t: t.update(pixel=t["pixel"][[0, 0]])),
                                         ["text_prototypes.safetensors tensor 'pixel'",
                                          "equal normal and anomaly rows", "text score 0.5"]),
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
    assert_unchanged(loaded, pixel_values)


def test_the_good_adapter_and_its_limits(good_adapter, loaded, tiny_clip):
    # Control: the rows above start from an adapter that loads, scores and keeps its threshold.
    fresh = fresh_model(tiny_clip)
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
    assert fresh_model(tiny_clip).load_category(str(linked)).shots == 3


def test_an_exact_memory_holds_at_most_max_shots(tiny_model):
    # more references are kept as a coreset; asking for the exact bank of them is refused
    with pytest.raises(ValueError, match=f"{MAX_SHOTS + 1} reference images in an exact memory bank; it holds at "
                                         f"most {MAX_SHOTS}"):
        tiny_model.add_category("widget", reference_images=fake_features(MAX_SHOTS + 1), coreset_ratio=1.0)
    assert tiny_model.categories == [] and tiny_model.category_bank.prompt_tokens.adapter_names == []


def test_saving_refuses_a_record_that_would_not_load(tiny_model, tmp_path):
    state = tiny_model.add_category("widget")
    state.metadata["decision_threshold"] = float("nan")
    with pytest.raises(ValueError, match=r"adapter: category.json field 'decision_threshold' is nan; expected null"):
        tiny_model.save_category(tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


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
        assert_unchanged(loaded, pixel_values)


# ------------------------------------------------------------------------------------------- entry points

@pytest.mark.parametrize("row", ["decision_threshold_string", "category_json_is_a_fifo", "nan_in_memory_bank",
                                 "huge_prompt_vectors_without_prototypes", "memory_bank_scaled_up"])
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
    assert_unchanged(loaded, pixel_values)
    assert 0.0 <= detector(image, category="widget")["score"] <= 1.0


# ------------------------------------------------------------------------------------------- values that would score every image alike
# Any stored tensor at a hostile scale: refused naming its file, or scores that are finite and still tell images
# apart (never the constant 0 "normal" that a NaN prototype or a scaled memory bank used to give).
HOSTILE_SCALES = (1e-30, 1e-12, 1e-3, 1e3, 1e12, 1e30, INF, -INF, NAN)
TARGETS = {"prompt_vectors": (ADAPTER_WEIGHTS, True), "prompt_vectors_without_prototypes": (ADAPTER_WEIGHTS, False),
           "prototypes": (PROTOTYPES_FILE, True), "memory_bank": (MEMORY_FILE, True)}


def _hostile_edit(scale, seed):
    """Multiply a random tensor's random rows (or all of it) by `scale`; ±inf and NaN go to random elements."""
    generator = torch.Generator().manual_seed(seed)

    def edit(tensors):
        key = sorted(tensors)[int(torch.randint(len(tensors), (1,), generator=generator))]
        flat = tensors[key].reshape(-1, tensors[key].shape[-1]).clone()
        every = torch.ones(flat.shape[0], dtype=torch.bool)
        rows = torch.rand(flat.shape[0], generator=generator) < 0.5 if seed % 2 else every
        if math.isfinite(scale):
            flat[rows] *= scale
        else:
            flat.view(-1)[torch.randint(flat.numel(), (3,), generator=generator)] = scale
        tensors[key] = flat.reshape(tensors[key].shape).contiguous()
    return edit


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", HOSTILE_SCALES, ids=str)
@pytest.mark.parametrize("target", list(TARGETS))
def test_hostile_scales_are_refused_or_score_finite_and_distinct(target, scale, seed, good_adapter, tiny_clip,
                                                                 pixel_values, tmp_path):
    filename, keep_prototypes = TARGETS[target]
    folder = tmp_path / "adapter"
    shutil.copytree(good_adapter, folder)
    if not keep_prototypes:
        (folder / PROTOTYPES_FILE).unlink()
    _edit_tensors(filename, _hostile_edit(scale, seed))(folder)
    model = fresh_model(tiny_clip)
    try:
        model.load_category(str(folder))
    except ValueError as error:  # refused: naming the adapter and the file, before the model changed
        message = str(error)
        assert message.startswith(f"{folder}: ") and filename in message and "\n" not in message, message
        assert model.categories == [] and model.category_bank.prompt_tokens.adapter_names == []
        return
    image_scores, maps = scores_of(model, pixel_values)
    assert torch.isfinite(image_scores).all() and torch.isfinite(maps).all()
    assert ((image_scores >= 0) & (image_scores <= 1)).all()
    assert image_scores.max() - image_scores.min() > 1e-6  # two different images, two different scores
    assert (maps.flatten(1).amax(1) - maps.flatten(1).amin(1) > 1e-6).all()  # no constant map


def test_the_issue_case_scored_zero_normal_before_and_is_refused_now(good_adapter, tiny_clip, tmp_path):
    # Huge prompt vectors, no stored prototypes: NaN prototypes, fused to a score of 0.0, "normal".
    folder = _bad_adapter(good_adapter, tmp_path, "huge_prompt_vectors_without_prototypes")
    model = fresh_model(tiny_clip)
    with pytest.raises(ValueError, match="largest |value| 6.8e+28"):
        model.load_category(str(folder))
    # The prototypes the model would have computed are NaN indeed (the reason for the refusal).
    from anomclip_hf.model.category import HEADS

    weights = load_file(str(folder / ADAPTER_WEIGHTS))[WEIGHT_KEY]
    state = model.add_category("widget", learned_prompts=True)
    with torch.no_grad():
        model.category_bank.prompt_tokens.vectors("widget").copy_(weights)
    model.clear_prototype_cache()
    with pytest.raises(ValueError, match=r"category 'widget': the text prototypes computed from its prompt vectors, "
                                         r"head 'image' holds \d+ NaN or infinite values"):
        model.text_prototypes()
    assert state.prototypes == {} and set(HEADS) == {"image", "pixel"}


def test_prototypes_computed_at_load_equal_the_stored_ones(good_adapter, tiny_clip, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(good_adapter, folder)
    (folder / PROTOTYPES_FILE).unlink()
    stored = load_file(str(good_adapter / PROTOTYPES_FILE))
    state = fresh_model(tiny_clip).load_category(str(folder))
    for head, prototypes in stored.items():  # computed while loading (checked), the same as save_category stored
        assert (state.prototypes[head] - prototypes).abs().max() < 1e-6


def test_scoring_never_turns_nan_into_a_normal_zero(good_adapter, loaded, pixel_values, tiny_clip):
    from anomclip_hf.model.scoring import harmonic_fusion

    assert torch.isnan(harmonic_fusion(torch.tensor([NAN, 0.3]), torch.tensor([0.2, NAN]))).all()
    assert harmonic_fusion(torch.zeros(1), torch.zeros(1)).item() == 0.0
    # finite pixel values far outside a preprocessed image's range: raw 0-255 pixels, or values the tower overflows on
    for scale in (200.0, 1e30):
        with pytest.raises(ValueError, match=r"pixel_values reach [\d.e+]+; expected preprocessed images \(\(pixels "
                                             r"in \[0, 1\] - mean\) / std, within \+-2\.15.*beyond \+-34\.3"):
            scores_of(loaded[0], pixel_values.abs() * scale)
    assert_unchanged(loaded, pixel_values)
    # a vision tower whose weights overflow: NaN features, refused instead of fused to 0
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    model.add_category("widget", reference_images=pixel_values)
    with torch.no_grad():
        model.clip.vision_model.embeddings.patch_embedding.weight.mul_(1e30)
    with pytest.raises(ValueError, match=r"the vision tower computed NaN or infinite features for images \[0, 1\] of "
                                         r"the batch \(pixel_values reach \d\.\d+\); expected preprocessed images"):
        scores_of(model, pixel_values)
    # a base whose logit_scale (the text temperature when the config sets none) turns NaN or negative
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))
    model.load_category(str(good_adapter))
    for value in (NAN, -1.0):
        with torch.no_grad():
            model.clip.logit_scale.fill_(value)
        with pytest.raises(ValueError, match=rf"the base's logit_scale is {value}, the text temperature; expected a "
                                             "finite positive number"):
            scores_of(model, pixel_values)


@pytest.mark.parametrize("setting, value, message", [
    ("text_temperature", NAN, "text_temperature=nan; expected a finite number > 0"),
    ("text_temperature", INF, "text_temperature=inf; expected a finite number > 0"),
    ("text_temperature", 0.0, "text_temperature=0.0; expected a finite number > 0"),
    ("text_temperature", -100.0, "text_temperature=-100.0; expected a finite number > 0"),
    ("gaussian_sigma", NAN, "gaussian_sigma=nan; expected a finite number >= 0"),
    ("gaussian_sigma", INF, "gaussian_sigma=inf; expected a finite number >= 0"),
    ("ctx_init_std", NAN, "ctx_init_std=nan; expected a finite number >= 0"),
    ("sigma_reference_size", 0, "sigma_reference_size=0; expected a positive integer"),
    ("output_size", -5, "output_size=-5; expected a positive integer or null"),
    ("image_mean", [NAN, 0.0, 0.0], "image_mean=[nan, 0.0, 0.0], image_std=[0.26"),
    ("image_std", [INF, 1.0, 1.0], "image_std=[inf, 1.0, 1.0]; expected finite values"),
])
def test_base_settings_that_would_score_silently_wrong_are_refused(setting, value, message, tiny_clip, base_folder,
                                                                   tmp_path):
    # Before: a NaN or infinite temperature scored every image 0.0, zero made every text score 0.5, a NaN blur
    # silently did none, an infinite one or a zero reference size ended in a traceback.
    from anomclip_hf import AnomCLIPConfig

    with pytest.raises(ValueError) as error:
        AnomCLIPConfig(clip_config=tiny_clip.config.to_dict(), **{setting: value})
    assert message in str(error.value)
    # ... the same from a saved base's config.json (a downloaded base is as untrusted as an adapter)
    folder = tmp_path / "base"
    shutil.copytree(base_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config[setting] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(message)):
        AnomCLIPModel.from_pretrained(str(folder))


# ------------------------------------------------------------------------------------------- Hub cache links
def test_hub_snapshot_links_into_the_repo_blobs_load_and_links_leaving_it_do_not(fake_hub, good_adapter, tiny_clip,
                                                                                 tmp_path):
    from anomclip_hf.model.publishing import upload_category_folder

    repo = "tester/anomclip-widget"
    upload_category_folder(str(good_adapter), repo)
    fresh = fresh_model(tiny_clip)
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
    other = fresh_model(tiny_clip)
    with pytest.raises(ValueError, match=rf"memory_bank.safetensors is a link to {outside}, outside .*"
                                         "models--tester--anomclip-widget"):
        other.load_category(repo, local_files_only=True)
    assert other.categories == [] and other.category_bank.prompt_tokens.adapter_names == []


# ------------------------------------------------------------------------------------------- coreset adapters
CORESET_ROWS = 300  # of the 3 x 225 reference patch rows per layer


@pytest.fixture(scope="module")
def coreset_adapter(tiny_clip, tmp_path_factory) -> Path:
    """The 3-shot "widget" with its memory as a coreset of 300 rows per layer (format 2)."""
    model = fresh_model(tiny_clip)
    references = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    model.add_category("widget", reference_images=references, learned_prompts=True, seed=2, memory_size=CORESET_ROWS)
    model.estimate_thresholds(references)
    return Path(model.save_category(tmp_path_factory.mktemp("coreset") / "adapter"))


def _edit_coreset(**changes):
    return lambda folder: _edit_json(folder, lambda record: record["memory"]["coreset"].update(changes))


CORESET_ROWS_OF_BAD_ADAPTERS = {
    "coreset_width_differs_from_the_base": (
        _edit_tensors(MEMORY_FILE, lambda t: t.update({k: torch.zeros(CORESET_ROWS, WIDTH + 1) for k in t})),
        ["memory_bank.safetensors tensor 'layer_0' has shape (300, 33); expected (300, 32)",
         "width 32 of this base"]),
    "coreset_rows_differ_from_its_size": (
        _edit_coreset(size=CORESET_ROWS - 1),
        ["memory_bank.safetensors tensor 'layer_0' has shape (300, 32); expected (299, 32)"]),
    "coreset_with_nan_rows": (
        _edit_tensors(MEMORY_FILE, lambda t: t["layer_0"][5].fill_(float("nan"))),
        ["memory_bank.safetensors tensor 'layer_0' holds 32 NaN or infinite values"]),
    "coreset_larger_than_its_bank": (
        _edit_coreset(size=3 * PATCHES + 1),
        ["field 'memory.coreset.size' is 676", "expected at most 675 rows"]),
    "coreset_rows_not_shots_times_patches": (
        _edit_coreset(rows=4 * PATCHES),
        ["field 'memory.coreset.rows' is 900", "shots x patches = 3 x 225 = 675"]),
    "coreset_radius_per_layer_missing": (
        _edit_coreset(coverage_radius=[0.5]),
        ["field 'memory.coreset.coverage_radius' has 1 values", "one per memory layer [0, 1]"]),
    "coreset_radius_negative": (
        _edit_coreset(coverage_radius=[-0.1, 0.2]),
        ["field 'memory.coreset.coverage_radius[0]' is -0.1", "a number from 0 to 2"]),
    "coreset_in_a_format_1_record": (
        _edit_record(format_version=1),
        ["format_version 1 but a 'memory.coreset'", "format_version 2"]),
}


@pytest.mark.parametrize("row", list(CORESET_ROWS_OF_BAD_ADAPTERS))
def test_hostile_coreset_adapter_is_refused_and_changes_nothing(row, coreset_adapter, loaded, pixel_values, tmp_path):
    folder = tmp_path / "bad" / "adapter"
    shutil.copytree(coreset_adapter, folder)
    mutate, fragments = CORESET_ROWS_OF_BAD_ADAPTERS[row]
    mutate(folder)
    with pytest.raises(ValueError) as error:
        loaded[0].load_category(str(folder), name="widget")
    message = str(error.value)
    assert message.startswith(f"{folder}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert_unchanged(loaded, pixel_values)


def test_the_good_coreset_adapter_loads(coreset_adapter, tiny_clip):
    state = fresh_model(tiny_clip).load_category(str(coreset_adapter))
    assert state.shots == 3 and tuple(state.memory_bank[0].shape) == (CORESET_ROWS, WIDTH)


# ------------------------------------------------------------------------------------------- DINOv2 memory adapters
_DINO_GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "dino"


def _dino(tiny_clip, variant: str = "tiny_dinov2") -> AnomCLIPModel:
    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                   memory_backbone=str(_DINO_GOLDEN / variant), memory_image_size=112)


@pytest.fixture(scope="module")
def dino_adapter(tiny_clip, tmp_path_factory) -> Path:
    model = _dino(tiny_clip)
    model.add_category("widget", reference_images=[str(_DINO_GOLDEN / "images" / f"train_{i}.png") for i in range(2)])
    return Path(model.save_category(tmp_path_factory.mktemp("dino") / "widget"))


def test_dino_adapter_refuses_a_base_without_a_memory_backbone(tiny_clip, dino_adapter):
    model = fresh_model(tiny_clip)
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
