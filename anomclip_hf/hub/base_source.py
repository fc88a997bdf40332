"""`--base` checked before anything heavy loads: a clear sentence naming the flag instead of transformers'
repo-id validation, retry lines or "no file named model.safetensors".

    local path (exists, or looks like one: ./x, /x, ~/x, a/b/c)  -> must be a model folder with config.json
    Hub id (org/name)                                            -> must be cached, or the Hub reachable
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ..errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub endpoint accepts a TCP connection within `timeout` s and offline mode is off.

    A quick probe: transformers' own download retries for about a minute before giving up.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    """The repo's config.json is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id
        return False


def check_model_folder(folder: str, flag: str = "--base") -> None:
    """ValueError naming `flag` unless `folder` is a transformers model folder (config.json + weights)."""
    if not os.path.exists(folder):
        raise CheckpointError(f"{flag} {folder}: folder does not exist (a local path; a Hub model id looks like "
                         "'org/name')")
    if not os.path.isdir(folder):
        raise CheckpointError(f"{flag} {folder}: is a file; expected a model folder (config.json and model.safetensors, "
                         "as save_pretrained or `anomclip convert-open-clip` writes it)")
    names = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    missing = [] if "config.json" in names else ["config.json"]
    if not any(name in names for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if missing:
        found = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"
        raise CheckpointError(f"{flag} {folder}: not a model folder: expected config.json and model.safetensors (a "
                         f"CLIP or AnomCLIP base as save_pretrained or `anomclip convert-open-clip` writes it); "
                         f"missing {' and '.join(missing)}, found: {found}")


def _names_a_local_folder(value: str) -> bool:
    """"converted/ViT-B-16" is a valid Hub id, but when ./converted exists it is a local path with a typo in
    its last part: report the missing folder, not a missing Hub model."""
    head = value.split("/", 1)[0] if "/" in value else value.split(os.sep, 1)[0]
    return head != value and os.path.isdir(head)


def check_base(value: str, flag: str = "--base") -> None:
    """Fail fast, naming `flag`, when `value` is neither a model folder nor a Hub id that can be loaded."""
    from .validation import looks_like_local_path, validate_repo_id

    if os.path.exists(value) or looks_like_local_path(value) or _names_a_local_folder(value):
        check_model_folder(value, flag)
        return
    try:
        validate_repo_id(value)
    except ValueError as error:
        if os.sep in value or "/" in value:  # a path, mistyped: say so rather than blame the Hub id rules
            check_model_folder(value, flag)
        raise CheckpointError(f"{flag} {value!r}: not a folder here and not a Hub model id ({error})") from None
    if not is_cached(value) and not hub_reachable():
        raise CheckpointError(f"{flag} {value}: not in the local Hugging Face cache and the Hub cannot be reached "
                         "(no network, or HF_HUB_OFFLINE=1); connect once to download it, or pass a local model folder")

