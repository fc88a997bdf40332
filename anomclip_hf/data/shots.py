"""Drawing the k normal reference images of a few-shot run, reproducibly.

The pool is the *sorted* list of normal image paths, so the draw depends only on the files and
the seed, not on directory listing order. The pool is shuffled with random.Random(seed) and the
first k taken, so for one seed the k-shot set is contained in the (k+1)-shot set. The returned
paths (sorted) are the record of the draw: save them with the results.
"""

from __future__ import annotations

import os
import random
from typing import Iterable, List, Union

from datasets import Dataset

from .schema import NORMAL
from ..errors import DatasetError


def sample_shots(source: Union[Dataset, Iterable[str]], k: int, seed: int) -> List[str]:
    """k normal image paths drawn with random.Random(seed) from the sorted pool, returned sorted.

    source is a dataset split from load_split (only its normal rows are used) or a list of paths.
    """
    pool = _normal_paths(source)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > len(pool):
        raise DatasetError(
            f"cannot draw k={k!r} shots from {len(pool)} normal images in {_describe(pool, source)}; "
            f"k must be an integer between 1 and {len(pool)}"
        )
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[index] for index in sorted(order[:k])]


def _normal_paths(source: Union[Dataset, Iterable[str]]) -> List[str]:
    if isinstance(source, Dataset):
        labels = list(source["label"])
        paths = [path for path, label in zip(source["path"], labels) if label == NORMAL]
    else:
        paths = [os.fspath(path) for path in source]
    return sorted(set(paths))


def _describe(pool: List[str], source) -> str:
    """The folder the pool lives in, for error messages."""
    if not pool:
        if isinstance(source, Dataset) and len(source):
            return f"dataset of category {', '.join(sorted(set(source['category'])))}"
        return "an empty image list"
    return os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in pool])
