"""Shared fixtures: tiny random CLIP models, offline tokenizers and the golden reference files."""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch
from golden_data import (
    GOLDEN_DATA_DIR,
    load_open_clip_config,
    load_open_clip_state_dict,
    load_reference,
)
from transformers import CLIPConfig, CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import (
    build_offline_clip_tokenizer,
    open_clip_bpe_path,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_clip_config(layers: int = 2, image_size: int = 30, patch_size: int = 2) -> CLIPConfig:
    """As transformers' own CLIP tests: hidden 32, 2 layers; a byte-level vocabulary of 514 tokens."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu")
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size, hidden_act="gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def perturb_norms(clip: CLIPModel, seed: int = 0) -> CLIPModel:
    """Random init leaves LayerNorms at 1/0 and biases at 0; perturb them so mistakes cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in clip.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return clip


@pytest.fixture(scope="session")
def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    return perturb_norms(CLIPModel(tiny_clip_config())).eval()


@pytest.fixture
def tiny_model(tiny_clip) -> AnomCLIPModel:
    # from_clip wraps the CLIPModel it is given (no copy): a copy keeps the session's tiny_clip untouched
    return AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False))


@pytest.fixture(scope="session")
def golden():
    return load_reference()


@pytest.fixture(scope="session")
def golden_clip() -> CLIPModel:
    from anomclip_hf.convert.open_clip import clip_model_from_open_clip_state_dict

    return clip_model_from_open_clip_state_dict(load_open_clip_config(), load_open_clip_state_dict())


@pytest.fixture(scope="session")
def golden_files(tmp_path_factory) -> SimpleNamespace:
    """The golden model as the files a user converts: its open_clip config and a torch checkpoint file."""
    folder = tmp_path_factory.mktemp("golden")
    config, weights = folder / "tiny_vv_config.json", folder / "tiny_vv_open_clip.pt"
    config.write_text(json.dumps(load_open_clip_config()))
    torch.save(load_open_clip_state_dict(), weights)
    return SimpleNamespace(config=config, weights=weights, images=GOLDEN_DATA_DIR / "images")


@pytest.fixture(scope="session")
def real_tokenizer():
    if open_clip_bpe_path() is None:
        pytest.fail("the real CLIP vocabulary needs open_clip_torch (pip install --no-deps open_clip_torch)")
    return build_offline_clip_tokenizer(real_vocab=True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A loopback fake Hub (tests/fake_hub.py) behind the real huggingface_hub client, with an empty cache in
    tmp_path and no token: nothing can reach the network or the user's cache."""
    from fake_hub import FakeHub
    from huggingface_hub import constants

    with FakeHub() as hub:
        for name, value in (("ENDPOINT", hub.url),
                            ("HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"),
                            ("HF_HUB_OFFLINE", False), ("HF_HUB_DISABLE_TELEMETRY", True),
                            ("HF_HUB_CACHE", str(tmp_path / "hf-cache")),
                            ("HF_TOKEN_PATH", str(tmp_path / "hf-token")),
                            ("HF_STORED_TOKENS_PATH", str(tmp_path / "hf-stored-tokens"))):
            monkeypatch.setattr(constants, name, value)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # for subprocesses
        yield hub
