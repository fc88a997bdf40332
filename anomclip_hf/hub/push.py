"""Push category adapters (one repo per category) and AnomCLIP base models to the Hub.

A push is one commit of exactly the adapter layout (plus the Hub's own .gitattributes); layout files the
new adapter no longer has (e.g. a memory bank) are deleted in the same commit, other files are left alone.
The model card is rendered for the repo id, so its usage snippet names the repo.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, constants

from ..category_io import CARD_FILE, LAYOUT_FILES, read_category_record
from ..model_card import render_base_card, render_category_card
from ..processing_anomclip import AnomCLIPProcessor
from .validation import pattern_fields, repo_id_from_pattern, validate_repo_id

if TYPE_CHECKING:  # push sits above the model and uses it through its methods only
    from ..modeling_anomclip import AnomCLIPModel


def _commit(repo_id: str, files: dict, *, managed: Sequence[str], private: Optional[bool], token,
            revision: Optional[str], commit_message: str) -> CommitInfo:
    """Create the repo (and branch) if needed and commit `files` ({path in repo: local path or bytes}),
    deleting the `managed` paths that the repo has but `files` lacks."""
    api = HfApi(token=token, library_name="anomclip-hf")
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    existing = set(api.list_repo_files(repo_id, revision=revision))
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=content) for path, content in files.items()]
    operations += [CommitOperationDelete(path_in_repo=path) for path in sorted(existing & set(managed) - set(files))]
    return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)


def upload_category_folder(folder: str, repo_id: str, *, private: Optional[bool] = None, token=None,
                           revision: Optional[str] = None, commit_message: Optional[str] = None) -> CommitInfo:
    """Push an adapter folder (as `save_category` writes it) to `repo_id`; returns the commit (its `oid`
    pins the revision). The folder is checked first: only a complete, valid adapter is pushed."""
    validate_repo_id(repo_id)
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"category adapter folder {folder} does not exist")
    record = read_category_record(folder)
    files = {name: os.path.join(folder, name) for name in LAYOUT_FILES
             if name != CARD_FILE and os.path.isfile(os.path.join(folder, name))}
    files[CARD_FILE] = render_category_card(record, repo_id).encode("utf-8")
    message = commit_message or f"Upload anomclip-hf category adapter {record['category']}"
    return _commit(repo_id, files, managed=LAYOUT_FILES, private=private, token=token, revision=revision,
                   commit_message=message)


def push_category_to_hub(model: AnomCLIPModel, repo_id: str, name: Optional[str] = None, *, private: Optional[bool] = None,
                         token=None, revision: Optional[str] = None,
                         commit_message: Optional[str] = None) -> CommitInfo:
    """Save category `name` (default: the active one) of `model` and push it to `repo_id`."""
    validate_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="anomclip-push-") as staging:
        folder = model.save_category(os.path.join(staging, "adapter"), name)
        return upload_category_folder(folder, repo_id, private=private, token=token, revision=revision,
                                      commit_message=commit_message)


def push_base_to_hub(model: AnomCLIPModel, repo_id: str, processor=None, *, private: Optional[bool] = None, token=None,
                     revision: Optional[str] = None, commit_message: Optional[str] = None,
                     license: Optional[str] = None) -> CommitInfo:
    """Push an AnomCLIP base model with its tokenizer, processor settings and model card, in one commit.

    `AnomCLIPModel.from_pretrained(repo_id)` and `AnomCLIPProcessor.from_pretrained(repo_id)` load it back.
    """
    validate_repo_id(repo_id)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer (model.tokenizer is None); set it before pushing, so the "
                         "prompt tokens travel with the base")
    with tempfile.TemporaryDirectory(prefix="anomclip-base-") as staging:
        model.save_pretrained(staging)
        (processor or AnomCLIPProcessor.from_model(model)).save_pretrained(staging)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(render_base_card(model.config, model.base_identity(), repo_id, license=license))
        files = {name: os.path.join(staging, name) for name in sorted(os.listdir(staging))
                 if os.path.isfile(os.path.join(staging, name))}
        return _commit(repo_id, files, managed=(), private=private, token=token, revision=revision,
                       commit_message=commit_message or "Upload anomclip-hf base model")


@dataclass(frozen=True)
class HubTarget:
    """Where training pushes each job's adapter: a repo id, or a pattern for fan-out runs such as
    "{org}/anomclip-{dataset}-{category}-{shots}shot" (fields: org, dataset, category, shots, seed)."""

    repo_id: str
    org: Optional[str] = None
    private: Optional[bool] = None
    revision: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)

    def repo_id_for(self, dataset: str, category: str, shots: int, seed: int) -> str:
        return repo_id_from_pattern(self.repo_id, org=self.org, dataset=dataset, category=category, shots=shots,
                                    seed=seed)

    def check_unique(self, jobs: Sequence) -> dict:
        """{job: repo id} for jobs with dataset/category/shots/seed; two jobs sharing a repo is an error
        (the second push would replace the first adapter)."""
        targets, owners = {}, {}
        for job in jobs:
            repo_id = self.repo_id_for(job.dataset, job.category, job.shots, job.seed)
            if repo_id in owners:
                missing = sorted({"dataset", "category", "shots", "seed"} - pattern_fields(self.repo_id))
                raise ValueError(f"--hub-repo-id {self.repo_id!r} sends jobs {owners[repo_id]} and {job} to the "
                                 f"same repo {repo_id!r}; add fields to the pattern (unused: {missing})")
            owners[repo_id] = job
            targets[job] = repo_id
        return targets

    def push(self, folder: str, repo_id: str) -> CommitInfo:
        return upload_category_folder(folder, repo_id, private=self.private, token=self.token,
                                      revision=self.revision)
