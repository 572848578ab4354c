"""Is an X-ray lung mask a plausible pair of lungs? If not, no share of the heatmap inside it may be shown.

A segmenter that misses a lung (a white hemithorax, a large effusion) leaves a mask of one lung, and the share of
the heatmap "inside the lungs" measured on it reassures where it should not. The mask is read against the
ranges of the X-ray lung segmenter's training masks (`segmentation/xray-lungs`, 342 hand-drawn masks of
frontal films): every one of them lies inside these ranges, each rounded outward at its second decimal.
`scripts/lung_mask_ranges.py` measures them again, and how many of the segmenter's masks of held-out films fall
outside (README):
- area: the share of the image inside the mask (training masks 0.093-0.615);
- balance: the smaller of the two largest regions over both (0.366-0.500; one lung alone gives 0);
- fill: each lung's area over its bounding box, the smaller of the two (0.519-0.824): a lung fills about two
  thirds of its box, a sliver or a ragged fragment far less;
- height: the shorter lung's height over the image's (0.299-1.000);
- sides: one lung on each side of the image's vertical midline (all 342).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AREA = (0.09, 0.62)
MIN_BALANCE = 0.36
MIN_FILL = 0.51
MIN_HEIGHT = 0.29


@dataclass(frozen=True)
class LungShape:
    """The measures of a lung mask that its plausibility is read from (see the module's docstring)."""

    area: float
    balance: float  # 0 when fewer than two regions
    fill: float  # NaN when fewer than two regions
    height: float  # NaN when fewer than two regions
    sides: bool


def measure(mask: np.ndarray) -> LungShape:
    """The area, balance, fill, height and sides of a mask's two largest regions."""
    mask = np.asarray(mask, dtype=bool)
    area = float(mask.mean())
    labels, count = ndimage.label(mask)
    if count < 2:
        return LungShape(area, 0.0, float("nan"), float("nan"), False)
    sizes = np.bincount(labels.ravel())[1:]
    largest = np.argsort(sizes)[::-1][:2] + 1
    pair = sizes[largest - 1]
    boxes = ndimage.find_objects(labels)
    fills, heights, centres = [], [], []
    for label, size in zip(largest, pair, strict=True):
        rows, columns = boxes[label - 1]
        height, width = rows.stop - rows.start, columns.stop - columns.start
        fills.append(size / (height * width))
        heights.append(height / mask.shape[0])
        centres.append(ndimage.center_of_mass(labels == label)[1])
    middle = mask.shape[1] / 2
    return LungShape(area, float(pair.min() / pair.sum()), float(min(fills)), float(min(heights)),
                     bool(min(centres) < middle < max(centres)))


def implausible(mask: np.ndarray) -> str | None:
    """Why the mask is not a plausible pair of lungs, in words; None when it is."""
    shape = measure(mask)
    if shape.balance == 0.0:
        return "it holds one lung field, not two"
    if not shape.sides:
        return "its two lung fields are not one on each side of the chest"
    if shape.balance < MIN_BALANCE:
        return (f"one lung field is {shape.balance:.0%} of the pair (at least {MIN_BALANCE:.0%} in the segmenter's "
                "training masks): a lung is probably missing in part")
    if not AREA[0] <= shape.area <= AREA[1]:
        return (f"it covers {shape.area:.0%} of the image ({AREA[0]:.0%}-{AREA[1]:.0%} in the segmenter's training "
                "masks)")
    if shape.fill < MIN_FILL or shape.height < MIN_HEIGHT:
        return "a lung field's shape is unlike any of the segmenter's training masks (a sliver or a fragment)"
    return None
