"""Publishing to the Hub: a category adapter folder, a model's category, an AnomCLIP base. The model side of
pushing: it knows the adapter layout; `hub.push.commit_files` does the upload and knows no model. The model is
used through its methods only (`save_category`, `save_pretrained`, ...), never imported: the model's own
`push_category_to_hub` calls this module."""

from __future__ import annotations

import os
import tempfile
from typing import Optional

from huggingface_hub import CommitInfo

from ..errors import AdapterError, ConfigurationError
from ..hub.model_card import render_base_card, render_category_card
from ..hub.push import commit_files
from ..hub.validation import validate_repo_id
from .category_io import CARD_FILE, LAYOUT_FILES, read_category_record
from .processing_anomclip import AnomCLIPProcessor


def upload_category_folder(folder: str, repo_id: str, *, private: Optional[bool] = None, token=None,
                           revision: Optional[str] = None, commit_message: Optional[str] = None) -> CommitInfo:
    """Push an adapter folder (as `save_category` writes it) to `repo_id`; returns the commit (its `oid`
    pins the revision). The folder is checked first: only a complete, valid adapter is pushed."""
    validate_repo_id(repo_id)
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise AdapterError(f"category adapter folder {folder} does not exist")
    record = read_category_record(folder)
    files = {name: os.path.join(folder, name) for name in LAYOUT_FILES
             if name != CARD_FILE and os.path.isfile(os.path.join(folder, name))}
    files[CARD_FILE] = render_category_card(record, repo_id).encode("utf-8")
    message = commit_message or f"Upload anomclip-hf category adapter {record['category']}"
    return commit_files(repo_id, files, managed=LAYOUT_FILES, private=private, token=token, revision=revision,
                   commit_message=message)


def push_category_to_hub(model, repo_id: str, name: Optional[str] = None, *, private: Optional[bool] = None,
                         token=None, revision: Optional[str] = None,
                         commit_message: Optional[str] = None) -> CommitInfo:
    """Save category `name` (default: the active one) of `model` and push it to `repo_id`."""
    validate_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="anomclip-push-") as staging:
        folder = model.save_category(os.path.join(staging, "adapter"), name)
        return upload_category_folder(folder, repo_id, private=private, token=token, revision=revision,
                                      commit_message=commit_message)


def push_base_to_hub(model, repo_id: str, processor=None, *, private: Optional[bool] = None, token=None,
                     revision: Optional[str] = None, commit_message: Optional[str] = None,
                     license: Optional[str] = None) -> CommitInfo:
    """Push an AnomCLIP base model with its tokenizer, processor settings and model card, in one commit.

    `AnomCLIPModel.from_pretrained(repo_id)` and `AnomCLIPProcessor.from_pretrained(repo_id)` load it back.
    """
    validate_repo_id(repo_id)
    if model.tokenizer is None:
        raise ConfigurationError("the model has no tokenizer (model.tokenizer is None); set it before pushing, so the "
                         "prompt tokens travel with the base")
    with tempfile.TemporaryDirectory(prefix="anomclip-base-") as staging:
        model.save_pretrained(staging)
        (processor or AnomCLIPProcessor.from_model(model)).save_pretrained(staging)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(render_base_card(model.config, model.base_identity(), repo_id, license=license))
        files = {name: os.path.join(staging, name) for name in sorted(os.listdir(staging))
                 if os.path.isfile(os.path.join(staging, name))}
        return commit_files(repo_id, files, managed=(), private=private, token=token, revision=revision,
                       commit_message=commit_message or "Upload anomclip-hf base model")
