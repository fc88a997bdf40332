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
from tiny_models import perturb_norms, tiny_clip_config
from transformers import CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import (
    build_offline_clip_tokenizer,
    open_clip_bpe_path,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


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
