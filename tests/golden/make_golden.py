"""Made tests/golden/ from the golden reference files (torch files of the reference run). Run by hand only:

    python tests/golden/make_golden.py /path/to/golden    # the folder holding tiny_vv_reference.pt etc.

It copies the stored numbers (computes none of them) into safetensors + JSON, then checks that
tests/golden_data.py reads back every tensor and value bit for bit, except the token-embedding rows no golden
prompt uses (see golden_data.py). Tests never run it: they read tests/golden/ only.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "helpers"))
from golden_data import (  # noqa: E402
    TOKEN_EMBEDDING,
    load_open_clip_state_dict,
    load_reference,
    normalized_pixels,
)

TOKEN_KEYS = ("tokens_normal", "tokens_abnormal_handle", "tokens_abnormal_learned")


def split_tree(tree: dict, prefix: str, tensors: dict) -> dict:
    """Tensors go to `tensors` under their dotted path; the rest stays as a JSON tree."""
    plain = {}
    for key, value in tree.items():
        path = prefix + key
        if isinstance(value, torch.Tensor):
            assert "." not in key, path
            tensors[path] = value.contiguous()
        elif isinstance(value, dict):
            plain[key] = split_tree(value, path + ".", tensors)
        else:
            plain[key] = value
    return plain


def pixels_as_uint8(pixel_values: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073))[:, None, None]
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711))[:, None, None]
    image = ((pixel_values * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    if not torch.equal(normalized_pixels(image), pixel_values):
        raise SystemExit("pixel_values are not an exactly normalised 8-bit image; store them as float32")
    return image


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main(source: Path) -> None:
    reference = torch.load(source / "tiny_vv_reference.pt", weights_only=True)
    tensors = {}
    plain = split_tree(reference, "", tensors)
    tensors["images.pixel_values_uint8"] = pixels_as_uint8(tensors.pop("images.pixel_values"))
    save_file(tensors, HERE / "tiny_vv_reference.safetensors")
    (HERE / "tiny_vv_reference.json").write_text(json.dumps(plain, indent=1) + "\n")

    state = torch.load(source / "tiny_vv_open_clip.pt", weights_only=True)
    used = sorted({int(i) for setting in reference["text"].values() for key in TOKEN_KEYS
                   for i in setting[key].unique()})
    compact = {k: v.contiguous() for k, v in state.items() if k != TOKEN_EMBEDDING}
    compact["token_embedding.kept_ids"] = torch.tensor(used, dtype=torch.int64)
    compact["token_embedding.kept_rows"] = state[TOKEN_EMBEDDING][used].contiguous()
    save_file(compact, HERE / "tiny_vv_open_clip.safetensors")
    shutil.copyfile(source / "tiny_vv_config.json", HERE / "tiny_vv_config.json")
    (HERE / "images").mkdir(exist_ok=True)
    for name in reference["images"]["files"]:
        shutil.copyfile(source / "images" / name, HERE / "images" / name)

    if not same(load_reference(), reference):
        raise SystemExit("tests/golden does not read back as the reference")
    rebuilt = load_open_clip_state_dict()
    if rebuilt.keys() != state.keys() or not all(same(rebuilt[k], state[k]) for k in state if k != TOKEN_EMBEDDING):
        raise SystemExit("weights do not read back")
    if not torch.equal(rebuilt[TOKEN_EMBEDDING][used], state[TOKEN_EMBEDDING][used]):
        raise SystemExit("token-embedding rows do not read back")
    print(f"ok: {len(used)} token-embedding rows kept of {state[TOKEN_EMBEDDING].shape[0]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
