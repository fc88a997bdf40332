"""The golden reference of tests/golden/ (PromptAD reference-code outputs on a tiny model), read back into the
nested structure and open_clip state dict that the original torch files held.

The files hold numbers only (safetensors + JSON), made by tests/golden/make_golden.py from the reference files.
Two things are stored compactly and rebuilt exactly here (the script checks both bit for bit):
- the model input `images.pixel_values` as the 8-bit image it was normalised from;
- the 49408x64 token embedding as the rows any golden prompt uses; the other rows are filled from a fixed
  seed (no stored number depends on them; open_clip and transformers read the same filled rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN_DATA_DIR = Path(__file__).resolve().parents[1] / "golden"
# torchvision's ToTensor + Normalize with the OpenAI CLIP statistics, as the reference preprocessing ends
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKEN_EMBEDDING = "token_embedding.weight"
FILL_SEED, FILL_STD = 0, 0.02  # open_clip's own init of the token embedding


def normalized_pixels(image_uint8: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) uint8 -> float32 model input, in the same operations and order as ToTensor then Normalize."""
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return image_uint8.to(torch.float32).div(255).sub(mean).div(std)


def _set_path(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


def load_reference(folder: Path = GOLDEN_DATA_DIR) -> dict:
    """The reference outputs as the nested dict of the original tiny_vv_reference.pt (README of the golden set)."""
    tree = json.loads((folder / "tiny_vv_reference.json").read_text())
    for dotted, tensor in load_file(folder / "tiny_vv_reference.safetensors").items():
        if dotted == "images.pixel_values_uint8":
            _set_path(tree, "images.pixel_values", normalized_pixels(tensor))
        else:
            _set_path(tree, dotted, tensor)
    return tree


def load_open_clip_config(folder: Path = GOLDEN_DATA_DIR) -> dict:
    return json.loads((folder / "tiny_vv_config.json").read_text())


def load_open_clip_state_dict(folder: Path = GOLDEN_DATA_DIR) -> dict:
    """The tiny model's open_clip state dict, with the token embedding rebuilt from its stored rows."""
    state = load_file(folder / "tiny_vv_open_clip.safetensors")
    ids, rows = state.pop("token_embedding.kept_ids"), state.pop("token_embedding.kept_rows")
    vocab = load_open_clip_config(folder)["text_cfg"]["vocab_size"]
    generator = torch.Generator().manual_seed(FILL_SEED)
    embedding = torch.randn(vocab, rows.shape[1], generator=generator) * FILL_STD
    embedding[ids] = rows
    state[TOKEN_EMBEDDING] = embedding
    return state
