"""CLIP tokenizers that can be built without the Hub.

The real CLIP BPE vocabulary ships inside the open_clip_torch package (``bpe_simple_vocab_16e6.txt.gz``);
it is located without importing open_clip (which needs torchvision). Without it, a byte-level vocabulary
with no merges is still a valid CLIPTokenizer, enough for tiny test models.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from functools import lru_cache
from typing import Optional

from transformers import CLIPTokenizer

SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The GPT-2/CLIP byte -> printable character table, in CLIP's vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]  # printable bytes map to themselves, the others to 256, 257, ...
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def open_clip_bpe_path() -> Optional[str]:
    """Path of open_clip's packaged BPE merges file, or None when open_clip_torch is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    return path if os.path.isfile(path) else None


def _vocab_and_merges(bpe_path: Optional[str]) -> tuple[dict[str, int], list[str]]:
    # Same construction as open_clip's SimpleTokenizer and the original CLIP: bytes, bytes + '</w>',
    # one entry per merge, then the two special tokens.
    symbols = _bytes_to_unicode()
    merges: list[str] = []
    if bpe_path is not None:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
            merges = handle.read().split("\n")[1: 49152 - 256 - 2 + 1]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [SOT, EOT]
    return {token: index for index, token in enumerate(tokens)}, merges


@lru_cache(maxsize=2)
def _tokenizer_files(use_real_vocab: bool) -> str:
    folder = tempfile.mkdtemp(prefix="anomclip-tokenizer-")
    vocab, merges = _vocab_and_merges(open_clip_bpe_path() if use_real_vocab else None)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    return folder


def build_offline_clip_tokenizer(real_vocab: bool = True) -> CLIPTokenizer:
    """A CLIPTokenizer made on this machine: the real 49408-token vocabulary when open_clip_torch is
    installed (``real_vocab=True``), else a 514-token byte-level one."""
    use_real = real_vocab and open_clip_bpe_path() is not None
    if real_vocab and not use_real:
        raise RuntimeError("the real CLIP vocabulary needs open_clip_torch installed (pip install open_clip_torch)")
    return CLIPTokenizer.from_pretrained(_tokenizer_files(use_real), model_max_length=77)


def add_prompt_tokens(tokenizer: CLIPTokenizer, names: list[str]) -> list[int]:
    """Add the prompt tokens `names` to a tokenizer (idempotent) and return their ids in that order."""
    missing = [name for name in names if name not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    return tokenizer.convert_tokens_to_ids(names)
