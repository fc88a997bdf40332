"""Category adapters and base models on the Hugging Face Hub.

    validation.py   category names, repo ids and repo-id patterns, checked before they reach disk or the Hub
    download.py     download_category: one repo's layout files through huggingface_hub (cache, revisions, offline)
    push.py         push_category_to_hub / upload_category_folder / push_base_to_hub, HubTarget for training runs
"""

from .download import CategoryDownloadError, CategorySnapshot, download_category
from .push import HubTarget, push_base_to_hub, push_category_to_hub, upload_category_folder
from .validation import repo_id_from_pattern, validate_category_name, validate_repo_id

__all__ = [
    "CategoryDownloadError",
    "CategorySnapshot",
    "HubTarget",
    "download_category",
    "push_base_to_hub",
    "push_category_to_hub",
    "repo_id_from_pattern",
    "upload_category_folder",
    "validate_category_name",
    "validate_repo_id",
]
