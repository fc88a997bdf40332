"""Category adapters and base models on the Hugging Face Hub.

    validation.py   category names, repo ids and repo-id patterns, checked before they reach disk or the Hub
    download.py     download_category: one repo's files through huggingface_hub (cache, revisions, offline)
    push.py         commit_files (one commit of given files), HubTarget for training runs
    model_card.py   the model cards of category adapters and base models

The hub layer knows no model and no adapter schema: the model side (`model.publishing`: upload_category_folder,
push_category_to_hub, push_base_to_hub) decides what to upload and calls `commit_files`. Names resolve on first
use (importing `hub.download` pulls in nothing else).
"""


from .._lazy import lazy_exports

_EXPORTS = {
    "CategoryDownloadError": "download", "CategorySnapshot": "download", "download_category": "download",
    "HubTarget": "push", "commit_files": "push",
    "repo_id_from_pattern": "validation", "validate_category_name": "validation", "validate_repo_id": "validation",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
