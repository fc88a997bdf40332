"""Uploads to the Hub, knowing no model: one commit of given files (`commit_files`), and where training pushes
each job's adapter (`HubTarget`). What to upload is decided by `model.publishing`.

A category push is one commit of exactly the adapter layout (plus the Hub's own .gitattributes); layout files the
new adapter no longer has (e.g. a memory bank) are deleted in the same commit, other files are left alone.
The model card is rendered for the repo id, so its usage snippet names the repo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
)

from ..errors import ConfigurationError
from .validation import pattern_fields, repo_id_from_pattern


def commit_files(repo_id: str, files: dict, *, managed: Sequence[str], private: Optional[bool], token,
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
                raise ConfigurationError(f"--hub-repo-id {self.repo_id!r} sends jobs {owners[repo_id]} and {job} to the "
                                 f"same repo {repo_id!r}; add fields to the pattern (unused: {missing})")
            owners[repo_id] = job
            targets[job] = repo_id
        return targets

    def upload_options(self) -> dict:
        """The keyword arguments of `model.publishing.upload_category_folder` for this target."""
        return {"private": self.private, "token": self.token, "revision": self.revision}
