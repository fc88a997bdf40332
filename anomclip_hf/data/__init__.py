"""Datasets for few-shot anomaly detection: loaders, mask reading, shot sampling, synthetic trees.

    load_split(dataset, root, category, split)   MVTec / VisA / plain folder -> datasets.Dataset
    list_categories(dataset, root)
    read_image(row_or_path), read_mask(row_or_path, size=None)   RGB image, binary 0/1 mask
    sample_shots(train_split_or_paths, k, seed)  reproducible k-shot normal reference paths
    generate_mvtec_tree(root, ...), generate_visa_tree(root, ..., layout="raw"|"pytorch")

Rows have columns image, mask (datasets.Image, lazily decoded from the stored path), mask_path,
label ("normal"/"anomaly"), defect_type, category, path; see schema.py. Masks must be binarised
through read_mask (VisA masks hold region numbers 1/2/3).
"""

from __future__ import annotations

from .._lazy import lazy_exports

# Names load their module on first use: finding image files (files.py) must not import `datasets`.
_EXPORTS = {
    "DatasetError": "anomclip_hf.errors",
    "DatasetLayoutError": "anomclip_hf.errors",
    "IMAGE_EXTENSIONS": "files",
    "list_folder_categories": "folder",
    "load_folder": "folder",
    "LabelledFolder": "labelled_folder",
    "load_labelled_folder": "labelled_folder",
    "DATASETS": "loading",
    "list_categories": "loading",
    "load_split": "loading",
    "list_mvtec_categories": "mvtec",
    "load_mvtec": "mvtec",
    "read_image": "reading",
    "read_mask": "reading",
    "FEATURES": "schema",
    "LABEL_NAMES": "schema",
    "sample_shots": "shots",
    "DEFECT_TYPES": "synthetic_images",
    "SyntheticSample": "synthetic_images",
    "render_normal": "synthetic_images",
    "render_sample": "synthetic_images",
    "generate_mvtec_tree": "synthetic_trees",
    "generate_visa_tree": "synthetic_trees",
    "detect_visa_layout": "visa",
    "list_visa_categories": "visa",
    "load_visa": "visa",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
