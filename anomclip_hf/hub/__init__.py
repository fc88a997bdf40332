"""Category adapters and base models on the Hugging Face Hub.

    validation.py   category names, repo ids and repo-id patterns, checked before they reach disk or the Hub
    download.py     download_category: one repo's files through huggingface_hub (cache, revisions, offline)
    push.py         push_category_to_hub / upload_category_folder / push_base_to_hub, HubTarget for training runs

download and validation sit below the adapter reader (`category_io` uses them); push sits above it (it
uploads what `category_io` wrote). So this package imports nothing eagerly: importing `hub.download` must
not pull in `hub.push`. The names below resolve on first use.
"""


from .._lazy import lazy_exports

_EXPORTS = {
    "CategoryDownloadError": "download", "CategorySnapshot": "download", "download_category": "download",
    "HubTarget": "push", "push_base_to_hub": "push", "push_category_to_hub": "push",
    "upload_category_folder": "push",
    "repo_id_from_pattern": "validation", "validate_category_name": "validation", "validate_repo_id": "validation",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
