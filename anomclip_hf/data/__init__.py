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

from ..errors import DatasetError, DatasetLayoutError
from .files import IMAGE_EXTENSIONS
from .folder import list_folder_categories, load_folder
from .labelled_folder import LabelledFolder, load_labelled_folder
from .loading import DATASETS, list_categories, load_split
from .mvtec import list_mvtec_categories, load_mvtec
from .reading import read_image, read_mask
from .schema import FEATURES, LABEL_NAMES
from .shots import sample_shots
from .synthetic_images import (
    DEFECT_TYPES,
    SyntheticSample,
    render_normal,
    render_sample,
)
from .synthetic_trees import generate_mvtec_tree, generate_visa_tree
from .visa import detect_visa_layout, list_visa_categories, load_visa

__all__ = [
    "LabelledFolder",
    "load_labelled_folder",
    "DATASETS",
    "DEFECT_TYPES",
    "FEATURES",
    "IMAGE_EXTENSIONS",
    "LABEL_NAMES",
    "DatasetError",
    "DatasetLayoutError",
    "SyntheticSample",
    "detect_visa_layout",
    "generate_mvtec_tree",
    "generate_visa_tree",
    "list_categories",
    "list_folder_categories",
    "list_mvtec_categories",
    "list_visa_categories",
    "load_folder",
    "load_mvtec",
    "load_split",
    "load_visa",
    "read_image",
    "read_mask",
    "render_normal",
    "render_sample",
    "sample_shots",
]
