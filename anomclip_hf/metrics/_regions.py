"""Connected ground-truth regions for PRO, following the MVTec AD reference evaluation.

Regions are found per image with scipy.ndimage.label and a 3x3 structure of ones (8-connectivity);
a region never spans two images.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

# 3x3 ones inside each (H, W) slice, nothing across the image axis: one label call for a whole batch
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def region_sizes(masks: np.ndarray) -> Tuple[np.ndarray, int]:
    """For bool masks (N, H, W): the size of the region each anomalous pixel belongs to (in masks[masks]
    order, int32) and the number of regions. PRO(t) = sum of 1/size over covered pixels / number of regions."""
    labels, n_regions = ndimage.label(masks, structure=_STRUCTURE)
    pixel_labels = labels[masks]
    del labels
    sizes = np.bincount(pixel_labels, minlength=n_regions + 1)
    return sizes[pixel_labels].astype(np.int32), int(n_regions)
