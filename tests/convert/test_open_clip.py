"""open_clip -> transformers CLIP converter: equivalence with open_clip, tokenizer and preprocessing, the
golden model through a converted folder, and clear refusals of what CLIP cannot represent.

open_clip models get random weights offline (create_model(name, pretrained=None)); their LayerNorms and biases
are perturbed first, since the factory's constant ones would hide a swapped or dropped tensor.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden_setup import HEAD_SETTINGS, golden_model
from module_loading import load_test_module
from PIL import Image
from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from anomclip_hf import AnomCLIPModel
from anomclip_hf.cli import build_parser, main
from anomclip_hf.convert.checks import (
    KNOWN_TEXT_OPTIONS,
    KNOWN_VISION_OPTIONS,
    TEXT_DEFAULTS,
    VISION_DEFAULTS,
    check_convertible,
)
from anomclip_hf.convert.open_clip import (
    CONVERSION_RECORD_NAME,
    UnsupportedOpenClipModel,
    clip_config_from_open_clip,
    clip_model_from_open_clip_state_dict,
    clip_tokenizer_for_open_clip,
    convert_open_clip,
    convert_open_clip_state_dict,
    save_converted_open_clip,
)
from anomclip_hf.convert.sources import (
    config_from_open_clip_model,
    resolve_open_clip_source,
)
from anomclip_hf.model.prompts import (
    MVTEC_CATEGORIES,
    VISA_CATEGORIES,
    ZERO_SHOT_TEMPLATE,
    class_name_for,
    manual_phrases,
)

TOL = 1e-4
TEXTS = ["a photo of a bottle.", "damaged metal nut with scratch.", "printed circuit board with bent"]
# A tiny open_clip CLIP (real 49408-token vocabulary, so CLIP's tokenizer applies) for option variants.
TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}

golden_parity = load_test_module("model/test_golden_parity.py")  # its checks run on the converted model too


@pytest.fixture(scope="module")
def open_clip():
    try:
        import open_clip
    except ImportError as error:
        pytest.fail(f"these tests need open_clip_torch with torchvision ({error}): "
                    "pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch")
    return open_clip


def perturb(model, seed: int = 0):
    """Non-constant LayerNorms, biases and class embedding, and a logit scale away from its init value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 and "logit" not in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        model.logit_scale.fill_(math.log(42.0))
    return model.eval()


def random_open_clip(open_clip, name: str, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(open_clip.create_model(name, pretrained=None), seed)


def tiny_open_clip(open_clip, seed: int = 0, **changes):
    cfg = json.loads(json.dumps(TINY_CFG))
    for key, value in changes.items():  # "vision_cfg.pool_type" -> cfg["vision_cfg"]["pool_type"]
        *parents, leaf = key.split(".")
        target = cfg
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    torch.manual_seed(seed)
    return cfg, perturb(open_clip.CLIP(**cfg), seed)


@dataclasses.dataclass
class Reference:
    """An open_clip model and its unnormalised embeddings of fixed inputs, computed once."""

    model: torch.nn.Module
    pixel_values: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor


def open_clip_reference(model, image_size: int, open_clip_tokenizer) -> Reference:
    pixel_values = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image, text = model.encode_image(pixel_values), model.encode_text(open_clip_tokenizer(TEXTS))
    assert (image[0] - image[1]).abs().max() > 0.01  # inputs that tell rows apart
    return Reference(model, pixel_values, image, text)


def max_differences(reference: Reference, converted: CLIPModel, tokenizer) -> tuple[float, float]:
    """(image, text) max abs differences of the converted model's embeddings (its own tokenizer's ids)."""
    input_ids = tokenizer(TEXTS, padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        image = converted.get_image_features(pixel_values=reference.pixel_values).pooler_output
        text = converted.get_text_features(input_ids=input_ids).pooler_output
    return (image - reference.image_embeds).abs().max().item(), (text - reference.text_embeds).abs().max().item()


@pytest.fixture(scope="module")
def plus240(open_clip):
    model = random_open_clip(open_clip, "ViT-B-16-plus-240")
    reference = open_clip_reference(model, 240, open_clip.get_tokenizer("ViT-B-16-plus-240"))
    return reference, convert_open_clip(model, name="ViT-B-16-plus-240")


@pytest.mark.parametrize("name,width,heads,act", [("ViT-B-16-plus-240", 896, 14, "gelu"),
                                                   ("ViT-B-32-quickgelu", 768, 12, "quick_gelu")])
def test_embeddings_and_logit_scale_equal_open_clip(open_clip, plus240, name, width, heads, act):
    if name == "ViT-B-16-plus-240":
        reference, converted = plus240
    else:
        model = random_open_clip(open_clip, name, seed=1)
        reference = open_clip_reference(model, 224, open_clip.get_tokenizer(name))
        converted = convert_open_clip(model, name=name)
    vision = converted.model.config.vision_config
    assert (vision.hidden_size, vision.num_attention_heads, vision.hidden_act) == (width, heads, act)
    assert converted.model.config.text_config.hidden_act == act
    image_diff, text_diff = max_differences(reference, converted.model, converted.processor.tokenizer)
    assert image_diff < TOL and text_diff < TOL
    assert converted.model.logit_scale.item() == pytest.approx(math.log(42.0), abs=1e-6)
    assert converted.model.logit_scale.item() == reference.model.logit_scale.item()


def test_paper_backbone_shapes_and_preprocessing(plus240):
    _, converted = plus240
    config = converted.model.config
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, vision.intermediate_size) == (
        240, 16, 12, 3584)
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers, text.max_position_embeddings,
            config.projection_dim) == (640, 10, 12, 77, 640)
    assert (text.bos_token_id, text.eos_token_id, vision.layer_norm_eps) == (49406, 49407, 1e-5)
    image_processor = converted.processor.image_processor
    assert image_processor.size["shortest_edge"] == 240 and image_processor.do_center_crop
    assert (image_processor.crop_size["height"], image_processor.crop_size["width"]) == (240, 240)
    assert image_processor.resample == 3  # bicubic
    assert tuple(image_processor.image_mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert tuple(image_processor.image_std) == pytest.approx((0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize("name,vision_sizes,text_sizes", [
    ("ViT-B-16", (768, 12, 12, 3072, 16, 224), (512, 8, 12, 512)),
    ("ViT-L-14", (1024, 24, 16, 4096, 14, 224), (768, 12, 12, 768)),
])
def test_registry_shapes_map_strictly(open_clip, name, vision_sizes, text_sizes):
    """Shapes only (a ViT-L-14 forward is slow on CPU): both models on the meta device, a strict load."""
    model_cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        reference = open_clip.CLIP(**model_cfg)
        clip = CLIPModel(clip_config_from_open_clip(model_cfg, name))
    converted = convert_open_clip_state_dict(reference.state_dict(), name)
    clip.load_state_dict(converted, strict=True, assign=True)
    vision, text = clip.config.vision_config, clip.config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size,
            vision.patch_size, vision.image_size) == vision_sizes
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers,
            clip.config.projection_dim) == text_sizes
    assert vision.hidden_act == text.hidden_act == "gelu"
    last = vision_sizes[1] - 1
    width = vision_sizes[0]
    assert converted[f"vision_model.encoder.layers.{last}.self_attn.q_proj.weight"].shape == (width, width)
    assert converted["visual_projection.weight"].shape == (text_sizes[3], width)
    # a model object describes itself as its registry config does
    inferred, _ = config_from_open_clip_model(reference, name)
    assert clip_config_from_open_clip(inferred).to_dict() == clip.config.to_dict()


@pytest.mark.parametrize("changes,act", [
    ({"quick_gelu": True}, "quick_gelu"),
    ({"vision_cfg.act_kwargs": {"approximate": "tanh"}, "text_cfg.act_kwargs": {"approximate": "tanh"},
      "vision_cfg.norm_kwargs": {"eps": 1e-6}, "text_cfg.norm_kwargs": {"eps": 1e-6}}, "gelu_pytorch_tanh"),
    ({"vision_cfg.final_ln_after_pool": True, "vision_cfg.pos_embed_type": "sin_cos_2d",
      "text_cfg.pool_type": "eos", "text_cfg.eos_id": 49407, "nonscalar_logit_scale": True}, "gelu"),
])
def test_mapped_options_equal_open_clip_from_object_and_from_config(open_clip, changes, act):
    cfg, model = tiny_open_clip(open_clip, **changes)
    by_object = convert_open_clip(model, name="tiny")
    by_config = clip_model_from_open_clip_state_dict(cfg, model.state_dict(), "tiny")
    reference = open_clip_reference(model, 32, open_clip.get_tokenizer("ViT-B-16"))
    for converted in (by_object.model, by_config):
        assert converted.config.vision_config.hidden_act == converted.config.text_config.hidden_act == act
        image_diff, text_diff = max_differences(reference, converted, by_object.processor.tokenizer)
        assert image_diff < TOL and text_diff < TOL
    if "vision_cfg.norm_kwargs" in changes:
        assert by_config.config.vision_config.layer_norm_eps == 1e-6
        assert by_object.model.config.text_config.layer_norm_eps == 1e-6


def test_wrong_activation_would_be_caught(open_clip):
    """The equivalence check is sharp: the same QuickGELU weights run with exact GELU differ clearly."""
    cfg, model = tiny_open_clip(open_clip, quick_gelu=True)
    wrong = clip_model_from_open_clip_state_dict({**cfg, "quick_gelu": False}, model.state_dict())
    reference = open_clip_reference(model, 32, open_clip.get_tokenizer("ViT-B-16"))
    image_diff, text_diff = max_differences(reference, wrong, clip_tokenizer_for_open_clip(77))
    assert image_diff > 20 * TOL and text_diff > 20 * TOL


def _class_prompts() -> list[str]:
    prompts = []
    for category in MVTEC_CATEGORIES + VISA_CATEGORIES:
        name = class_name_for(category)
        prompts += [category, name, ZERO_SHOT_TEMPLATE.format(name)]
        prompts += [phrase.format(name) + "." for phrase in manual_phrases(category)]
    return prompts + ["A  PHOTO of   a Metal_Nut!", "pcb4 with 2 wrong-place parts, 3.5mm", "café crème brûlée",
                      "it's   don't", "x " * 100]  # case, spaces, digits, accents, truncation at 77


@pytest.fixture(scope="module")
def golden_folder(tmp_path_factory, golden_files):
    out = tmp_path_factory.mktemp("converted") / "tiny-vv"
    assert save_converted_open_clip("tiny-vv", str(golden_files.weights), out,
                                    config_path=str(golden_files.config)) == str(out)
    return out


def test_tokenizer_in_folder_gives_open_clip_ids(open_clip, golden_folder):
    prompts = _class_prompts()
    assert {"metal nut", "printed circuit board", "pipe fryum", "chewing gum"} <= set(prompts)
    reference = open_clip.get_tokenizer("ViT-B-16-plus-240")(prompts)
    ours = CLIPTokenizer.from_pretrained(golden_folder)(prompts, padding="max_length", truncation=True,
                                                        return_tensors="pt").input_ids
    assert ours.shape == reference.shape == (len(prompts), 77)
    used = reference != 0  # open_clip pads with 0, CLIP's tokenizer with <|endoftext|>
    assert torch.equal(ours[used], reference[used])
    assert bool((ours[~used] == 49407).all())
    assert reference[-1, -1] == ours[-1, -1] == 49407  # the long prompt is cut and still ends with EOT


def test_golden_folder_layout_and_record(golden_folder, golden_files):
    names = set(os.listdir(golden_folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", CONVERSION_RECORD_NAME} <= names
    assert not [n for n in os.listdir(golden_folder.parent) if n.startswith(".")]  # no staging left behind
    record = json.loads((golden_folder / CONVERSION_RECORD_NAME).read_text())
    assert record["open_clip_model"] == "tiny-vv" and record["checkpoint"] == "tiny_vv_open_clip.pt"
    assert record["checkpoint_sha256"] == hashlib.sha256(golden_files.weights.read_bytes()).hexdigest()
    processor = CLIPProcessor.from_pretrained(golden_folder)
    assert processor.image_processor.crop_size["height"] == 240 and processor.tokenizer.model_max_length == 77


def test_golden_parity_runs_on_the_converted_folder(golden_folder, golden):
    clip = CLIPModel.from_pretrained(golden_folder)
    model = golden_model(clip, CLIPTokenizer.from_pretrained(golden_folder), golden)
    golden_parity.test_features(model, golden)
    for head, setting in HEAD_SETTINGS:
        golden_parity.test_prompt_token_layout(model, golden, head, setting)
        golden_parity.test_text_features_and_prototypes(model, golden, head, setting)
    golden_parity.test_scores_and_maps(model, golden)


def test_golden_folder_equals_open_clip(open_clip, golden_folder, golden_files):
    model = open_clip.CLIP(**json.loads(golden_files.config.read_text()))
    model.load_state_dict(torch.load(golden_files.weights, weights_only=True), strict=True)
    reference = open_clip_reference(model.eval(), 240, open_clip.get_tokenizer("ViT-B-16"))
    image_diff, text_diff = max_differences(reference, CLIPModel.from_pretrained(golden_folder),
                                            CLIPTokenizer.from_pretrained(golden_folder))
    assert image_diff < TOL and text_diff < TOL


def test_from_clip_on_converted_paper_backbone(open_clip, plus240, tmp_path):
    reference, _ = plus240
    folder = save_converted_open_clip(reference.model, None, tmp_path / "vitb16plus", name="ViT-B-16-plus-240")
    model = AnomCLIPModel.from_clip(folder)
    with torch.no_grad():
        features = model.encode_images(reference.pixel_values)
    assert features.patch_embeds.shape == (2, 225, 640)
    # AnomCLIP's global feature is L2-normalised: open_clip's encode_image(normalize=True)
    assert (features.global_embeds - F.normalize(reference.image_embeds, dim=-1)).abs().max() < TOL


def _striped_image(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    noise = np.random.RandomState(0).randint(0, 40, (height, width, 3))
    pixels = np.stack([xx * 255 / width, yy * 255 / height, ((xx + yy) % 64) * 4], -1) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(320, 200), (101, 157)])
def test_image_processor_matches_open_clip_preprocess(open_clip, golden_folder, size):
    image = _striped_image(*size)  # non-square: resize of the shortest edge, then the centre crop
    expected = open_clip.image_transform(240, is_train=False)(image)  # open_clip's defaults: bicubic, OpenAI stats
    pil = AutoImageProcessor.from_pretrained(golden_folder, backend="pil")
    assert (pil(images=image, return_tensors="pt").pixel_values[0] - expected).abs().max() < 1e-6
    # torchvision's tensor resize rounds a few pixels to the neighbouring 8-bit level (1/255/std = 0.015)
    fast = AutoImageProcessor.from_pretrained(golden_folder, backend="torchvision")
    difference = (fast(images=image, return_tensors="pt").pixel_values[0] - expected).abs()
    assert difference.max() < 2.01 / 255 / 0.2613 and (difference > 1e-5).float().mean() < 0.01


def test_preprocess_cfg_of_a_config_file_is_used(open_clip, tmp_path, golden_files):
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                  "resize_mode": "squash"}
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": json.loads(golden_files.config.read_text()),
                                  "preprocess_cfg": preprocess}))
    folder = save_converted_open_clip("tiny-vv", str(golden_files.weights), tmp_path / "out", config_path=str(config))
    image = _striped_image(300, 170)
    expected = open_clip.image_transform(240, is_train=False, **preprocess)(image)
    ours = AutoImageProcessor.from_pretrained(folder, backend="pil")(images=image, return_tensors="pt").pixel_values
    assert ours.shape == (1, 3, 240, 240) and (ours[0] - expected).abs().max() < 1e-6


@pytest.mark.parametrize("name,options", [
    ("RN50", ["vision_cfg.layers=[3, 4, 6, 3]: a ModifiedResNet"]),
    ("convnext_base", ["vision_cfg.timm_model_name='convnext_base'"]),
    ("roberta-ViT-B-32", ["text_cfg.hf_model_name='roberta-base'", "text_cfg.hf_tokenizer_name='roberta-base'"]),
    ("coca_ViT-B-32", ["multimodal_cfg=", "vision_cfg.attentional_pool=True", "text_cfg.embed_cls=True"]),
    ("ViT-L-14-CLIPA", ["vision_cfg.no_ln_pre=True", "vision_cfg.pool_type='avg'", "text_cfg.no_causal_mask=True",
                        "text_cfg.hf_tokenizer_name='bert-base-uncased'"]),
    ("ViT-M-16-alt", ["vision_cfg.ls_init_value=0.0001: LayerScale"]),
    ("ViT-B-16-SigLIP", ["custom_text=True", "init_logit_bias=-10", "vision_cfg.timm_model_name"]),
    ("ViT-L-14-worldwide", ["text_cfg.hf_tokenizer_name='google/mt5-base'", "text_cfg.tokenizer_kwargs"]),
])
def test_unmappable_open_clip_models_are_refused_before_reading_weights(open_clip, name, options):
    with pytest.raises(UnsupportedOpenClipModel) as raised:  # the checkpoint does not exist: never read
        convert_open_clip(name, "never-read.safetensors")
    message = str(raised.value)
    assert f"open_clip model {name!r}" in message
    for option in options:
        assert option in message


@pytest.mark.parametrize("section,option,value,expected", [
    ("vision_cfg", "image_size", [32, 48], "vision_cfg.image_size=[32, 48]: a non-square input"),
    ("vision_cfg", "qk_norm", True, "vision_cfg.qk_norm=True"),
    ("vision_cfg", "block_type", "custom", "vision_cfg.block_type='custom'"),
    ("vision_cfg", "norm_kwargs", {"elementwise_affine": False}, "vision_cfg.norm_kwargs="),
    ("vision_cfg", "some_new_option", 1, "vision_cfg.some_new_option=1: an option this converter does not know"),
    ("text_cfg", "proj_bias", True, "text_cfg.proj_bias=True"),
    ("text_cfg", "pool_type", "first", "text_cfg.pool_type='first'"),
    ("text_cfg", "pool_type", "eos", "text_cfg.eos_id=2"),  # open_clip's default eos_id is not CLIP's EOT
    ("text_cfg", "vocab_size", 32000, "text_cfg.vocab_size=32000"),
    ("text_cfg", "act_kwargs", {"approximate": "none", "inplace": True}, "text_cfg.act_kwargs="),
    ("preprocess", "resize_mode", "longest", "preprocess_cfg.resize_mode='longest'"),
])
def test_unmappable_options_are_named(section, option, value, expected):
    cfg = json.loads(json.dumps(TINY_CFG))
    preprocess = {option: value} if section == "preprocess" else None
    if section != "preprocess":
        cfg[section][option] = value
    with pytest.raises(UnsupportedOpenClipModel, match="open_clip model 'tiny'") as raised:
        check_convertible(cfg, "tiny", preprocess)
    assert expected in str(raised.value)


def test_quickgelu_options_must_not_carry_gelu_kwargs():
    cfg = {**TINY_CFG, "quick_gelu": True, "vision_cfg": {**TINY_CFG["vision_cfg"], "act_kwargs": {"approximate":
                                                                                                    "tanh"}}}
    with pytest.raises(UnsupportedOpenClipModel, match="options for QuickGELU"):
        check_convertible(cfg, "tiny")


@pytest.mark.parametrize("kind,expected", [
    ("attentional_pool", "vision_cfg.attentional_pool=True"),
    ("layer_scale", "vision_cfg.ls_init_value=True: LayerScale"),
    ("bidirectional_text", "text_cfg.no_causal_mask=True"),
    ("resnet", "ModifiedResNet vision tower"),
    ("custom_text", "is a CustomTextCLIP"),
])
def test_unmappable_model_objects_are_refused(open_clip, kind, expected):
    vision, text = dict(TINY_CFG["vision_cfg"]), dict(TINY_CFG["text_cfg"])
    model_class = open_clip.CLIP
    if kind == "attentional_pool":
        vision.update(attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=4)
    elif kind == "layer_scale":
        vision["ls_init_value"] = 1e-4
    elif kind == "bidirectional_text":
        text["no_causal_mask"] = True
    elif kind == "resnet":
        vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
    else:
        model_class = open_clip.CustomTextCLIP
    model = model_class(embed_dim=32, vision_cfg=vision, text_cfg=text)
    with pytest.raises(UnsupportedOpenClipModel, match="open_clip model 'tiny'") as raised:
        convert_open_clip(model, name="tiny")
    assert expected in str(raised.value)


def test_cli_converts_a_registered_name_with_a_checkpoint_file(open_clip, monkeypatch, tmp_path, golden_files):
    """The name route end to end: open_clip's registry gives the config, the file the weights."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "anomclip-tiny-vv",
                        json.loads(golden_files.config.read_text()))
    out = tmp_path / "tiny"
    assert main(["convert-open-clip", "--model", "anomclip-tiny-vv", "--checkpoint", str(golden_files.weights),
                 "--output", str(out)]) == 0
    model = open_clip.create_model("anomclip-tiny-vv", pretrained=str(golden_files.weights)).eval()
    reference = open_clip_reference(model, 240, open_clip.get_tokenizer("anomclip-tiny-vv"))
    image_diff, text_diff = max_differences(reference, CLIPModel.from_pretrained(out),
                                            CLIPProcessor.from_pretrained(out).tokenizer)
    assert image_diff < TOL and text_diff < TOL
    assert json.loads((out / CONVERSION_RECORD_NAME).read_text())["open_clip_model"] == "anomclip-tiny-vv"


def test_registry_names_and_quickgelu_suffix(open_clip):
    with pytest.raises(ValueError, match="knows no model named 'ViT-B-16-plus-24'.*ViT-B-16-plus-240"):
        convert_open_clip("ViT-B-16-plus-24", "weights.pt")
    # open_clip registers no ViT-B-16-plus-240-quickgelu: the suffix turns QuickGELU on for the registered model
    source = resolve_open_clip_source("ViT-B-16-plus-240-quickgelu", "weights.pt")
    assert source.model_cfg["quick_gelu"] is True and source.model_cfg["vision_cfg"]["width"] == 896
    assert resolve_open_clip_source("ViT-B-16-plus-240", "weights.pt").model_cfg.get("quick_gelu", False) is False


def test_pretrained_tags_without_network(open_clip, monkeypatch, golden_files):
    with pytest.raises(ValueError, match="laion400m_e31.*laion400m_e32"):  # names the model's real tags
        resolve_open_clip_source("ViT-B-16-plus-240", "laion400m_e99")
    calls = []

    def fake_download(cfg, prefer_hf_hub=True, cache_dir=None):
        calls.append((cfg["url"], prefer_hf_hub))
        return str(golden_files.weights)

    monkeypatch.setattr(open_clip, "download_pretrained", fake_download)
    source = resolve_open_clip_source("ViT-B-16-plus-240", "laion400m_e32")
    assert source.model_cfg.get("quick_gelu", False) is False and source.preprocess_cfg["interpolation"] == "bicubic"
    assert "visual.proj" in source.load_state_dict()
    # open_clip 3.3 points e31 and e32 at one Hub repo (the e31 weights): the e32 release URL is used instead
    assert calls == [(open_clip.get_pretrained_cfg("ViT-B-16-plus-240", "laion400m_e32")["url"], False)]
    assert "laion400m_e32" in calls[0][0]
    # OpenAI's weights were trained with QuickGELU, whatever the plain ViT-B-16 config says
    assert resolve_open_clip_source("ViT-B-16", "openai").model_cfg["quick_gelu"] is True

    def offline(cfg, prefer_hf_hub=True, cache_dir=None):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(OSError, match="no route to host.*pass its path instead"):
        resolve_open_clip_source("ViT-B-16-plus-240", "laion400m_e32").load_state_dict()


def test_checkpoint_file_formats(tmp_path, golden_files):
    from safetensors.torch import save_file

    state = torch.load(golden_files.weights, weights_only=True)
    reference = clip_model_from_open_clip_state_dict(json.loads(golden_files.config.read_text()), state)
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "train.pt")
    for path in ("w.safetensors", "train.pt"):
        model = convert_open_clip("tiny-vv", str(tmp_path / path), config=str(golden_files.config)).model
        assert torch.equal(model.visual_projection.weight, reference.visual_projection.weight)
        assert torch.equal(model.text_model.encoder.layers[11].self_attn.k_proj.bias,
                           reference.text_model.encoder.layers[11].self_attn.k_proj.bias)
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "jit.pt"))
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "obj.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for path, expected in (("jit.pt", "jit.pt is a TorchScript archive"), ("obj.pt", "objects other than tensors"),
                           ("tensor.pt", "expected a state dict"), ("missing.pt", "checkpoint file not found")):
        with pytest.raises((ValueError, FileNotFoundError), match=expected):
            convert_open_clip("tiny-vv", str(tmp_path / path), config=str(golden_files.config))


def test_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path, golden_files):
    state = torch.load(golden_files.weights, weights_only=True)
    cfg = json.loads(golden_files.config.read_text())
    with pytest.raises(UnsupportedOpenClipModel, match=r"no place for: \['visual.attn_pool.query'\]"):
        clip_model_from_open_clip_state_dict(cfg, {**state, "visual.attn_pool.query": torch.zeros(4, 32)})
    with pytest.raises(ValueError, match="does not fit its config.*unexpected"):
        clip_model_from_open_clip_state_dict({**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": 6}}, state)
    with pytest.raises(ValueError, match="(?s)does not fit its config.*size mismatch for visual_projection"):
        clip_model_from_open_clip_state_dict({**cfg, "embed_dim": 16}, state)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vision_cfg": {}}))
    with pytest.raises(ValueError, match="bad.json is not an open_clip model config.*embed_dim"):
        convert_open_clip("x", str(golden_files.weights), config=str(bad))


def test_cli_refusal_is_a_message_and_leaves_the_output_alone(tmp_path, capsys, golden_files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    config = tmp_path / "ls.json"
    cfg = json.loads(golden_files.config.read_text())
    cfg["vision_cfg"]["ls_init_value"] = 1e-5
    config.write_text(json.dumps(cfg))
    code = main(["convert-open-clip", "--model", str(config), "--checkpoint", str(golden_files.weights),
                 "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("anomclip convert-open-clip: error:")
    assert "vision_cfg.ls_init_value=1e-05: LayerScale" in err
    assert os.listdir(out) == ["keep.txt"]
    convert = build_parser()._subparsers._group_actions[0].choices["convert-open-clip"]
    assert "anomclip convert-open-clip --model ViT-B-16-plus-240 --checkpoint" in convert.format_help()


def test_option_lists_follow_open_clip(open_clip):
    """A field open_clip adds or a default it changes must be looked at here before models use it."""
    vision_fields = {f.name: f.default for f in dataclasses.fields(open_clip.CLIPVisionCfg)}
    text_fields = {f.name: f.default for f in dataclasses.fields(open_clip.CLIPTextCfg)}
    assert set(vision_fields) <= KNOWN_VISION_OPTIONS and set(text_fields) <= KNOWN_TEXT_OPTIONS
    assert {k: vision_fields[k] for k in VISION_DEFAULTS} == VISION_DEFAULTS
    assert {k: text_fields[k] for k in TEXT_DEFAULTS} == TEXT_DEFAULTS
