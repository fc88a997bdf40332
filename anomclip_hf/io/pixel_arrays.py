"""CLIP pixel values as a numpy array: the one image preprocessing of the package.

Torch-free, so the PyTorch processor and the ONNX Runtime detector (anomclip_hf.export.runtime) share it and
feed their models the same numbers.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from .image_io import PathOrImage, load_image
from ..errors import ArgumentError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the resample value of CLIP processor configs
# PIL resample values by name, as an exported model's sidecar JSON names its resize filter
RESAMPLE_NAMES = {int(filter_): filter_.name.lower() for filter_ in Image.Resampling}

ImageInput = Union[PathOrImage, np.ndarray]
# How far past the largest preprocessed value pixel values may go (callers normalise in their own ways, tests
# feed N(0, 1) noise); far beyond are raw 0-255 pixels or values that overflow the tower: garbage scores.
PIXEL_RANGE_SLACK = 16.0


def pixel_range_problem(largest: float, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> Optional[str]:
    """None if pixel values whose largest magnitude is `largest` can be preprocessed images for `mean`/`std`,
    else what was expected. Preprocessed values are (pixels in [0, 1] - mean) / std."""
    reach = max(max(m, 1.0 - m) / s for m, s in zip(mean, std))
    if largest <= PIXEL_RANGE_SLACK * reach:
        return None
    return (f"pixel_values reach {largest:.3g}; expected preprocessed images ((pixels in [0, 1] - mean) / std, "
            f"within +-{reach:.3g}, as AnomCLIPProcessor makes them; refused beyond +-{PIXEL_RANGE_SLACK * reach:.3g}:"
            " raw 0-255 pixels, or values that overflow the vision tower)")


def as_pil(item: ImageInput) -> Image.Image:
    """An RGB PIL image from a path, a PIL image of any mode or a uint8 (H, W[, C]) array."""
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ArgumentError(f"numpy images must be uint8 (H, W[, C]); got {item.dtype}")
        item = Image.fromarray(item)
    return load_image(item)


def pixel_array(images: Sequence[ImageInput], image_size: int, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                resample: int = BICUBIC) -> np.ndarray:
    """(B, 3, S, S) float32 pixel values: any PIL mode to RGB, resize to S x S (bicubic by default), mean/std
    normalise.

    The whole image is resized (no shortest-edge resize and centre crop, unlike CLIP's own processors), so
    masks stay aligned and no border defect is cut off.
    """
    filter_ = Image.Resampling(resample)
    batch = [np.asarray(as_pil(item).resize((image_size, image_size), filter_), dtype=np.float32) / 255.0
             for item in images]
    if not batch:
        raise ArgumentError("no images given")
    pixels = np.stack(batch).transpose(0, 3, 1, 2)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((pixels - mean_a) / std_a)
