"""Fetch a category adapter repo through huggingface_hub: one repo's snapshot, the layout files only.

`snapshot_download` gives revision pinning (branch, tag or commit), the shared cache (a second load makes
no file transfer) and HF_HUB_OFFLINE. `allow_patterns` lists the known layout files by exact name, so a
pickle or any other file in the repo is never even downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # the repo listing snapshot_download caches (huggingface_hub >= 1.x); older clients: no listing
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
except ImportError:  # pragma: no cover - depends on the installed client
    get_cached_repo_tree, CachedRepoTreeNotFoundError = None, LookupError

from .._version import __version__
from ..errors import AnomCLIPError
from .validation import validate_repo_id


class CategoryDownloadError(AnomCLIPError, OSError):
    """A category repo could not be fetched (not found, offline and not cached, ...)."""


@dataclass(frozen=True)
class CategorySnapshot:
    folder: str  # the snapshot folder in the cache (files are links into the cache's blobs)
    commit: str  # the commit the revision resolved to
    repo_files: Optional[tuple]  # every file of the repo at that commit, when the listing is cached

    @property
    def repo_folder(self) -> str:
        """The repo's folder in the cache (models--owner--name): its snapshots' links point into its blobs/."""
        return os.path.dirname(os.path.dirname(os.path.abspath(self.folder)))


def download_category(repo_id: str, revision: Optional[str] = None, *, filenames: Sequence[str],
                      cache_dir: Optional[str] = None, token=None, local_files_only: bool = False,
                      force_download: bool = False) -> CategorySnapshot:
    """Download (or find in the cache) the files named `filenames` (the adapter layout, which
    `category_io` owns) of `repo_id` at `revision` (default: main)."""
    validate_repo_id(repo_id)
    wanted = f"{repo_id!r} (revision {revision or constants.DEFAULT_REVISION})"
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=local_files_only, force_download=force_download,
                                   allow_patterns=list(filenames), library_name="anomclip-hf",
                                   library_version=__version__)
    except RevisionNotFoundError:
        raise CategoryDownloadError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CategoryDownloadError(f"category repo {repo_id!r} was not found on {constants.ENDPOINT} (a private "
                                    "or gated repo needs a token: `hf auth login` or token=...)") from None
    except LocalEntryNotFoundError as error:
        cache = cache_dir or constants.HF_HUB_CACHE
        if constants.is_offline_mode() or local_files_only:
            raise CategoryDownloadError(
                f"category {wanted} is not in the Hugging Face cache ({cache}) and downloads are off "
                "(HF_HUB_OFFLINE=1 or local_files_only=True): load it once with network access, or pass a local "
                "adapter folder") from None
        raise CategoryDownloadError(f"category {wanted} could not be downloaded and is not in the cache ({cache}): "
                                    f"{error}") from None
    commit = os.path.basename(folder)
    return CategorySnapshot(folder=folder, commit=commit, repo_files=_cached_listing(repo_id, commit, cache_dir))


def _cached_listing(repo_id: str, commit: str, cache_dir: Optional[str]) -> Optional[tuple]:
    """Every file of the repo at `commit`, from the listing snapshot_download cached (no request)."""
    if get_cached_repo_tree is None:
        return None
    try:
        return tuple(entry.path for entry in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache_dir))
    except CachedRepoTreeNotFoundError:
        return None
