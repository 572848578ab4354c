"""The lungs' bounding box: on one windowed CT slice without a network (the crop of the lung-focused CT input), and
from a lung mask (the X-ray lung-focused input, whose mask comes from the lung segmenter).

A real DICOM slice shows the whole scan field (air around the body, the table, the arms) with the lungs in a
third of it, while the UCSD slices are figure crops framed around the chest: a classifier can tell the two apart
by the framing alone. Cropping both to the lungs removes that cue. On a lung-window slice the lungs are the large
dark regions that do not reach the image border (the air around the body does): an Otsu threshold on a small
thumbnail, border-connected regions removed, regions under 1 % of the image dropped. When that finds too little
(a slice cut inside the chest wall, a slice below the lungs, a photograph) the whole image is kept: the crop only
ever narrows the view to evidence of lungs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

Box = tuple[int, int, int, int]  # (top, bottom, left, right), bottom and right exclusive, in image pixels

THUMBNAIL = 128  # the threshold runs on a square thumbnail of this side
MIN_REGION = 0.01  # a dark region under this share of the thumbnail is a vessel or noise, not a lung
MIN_LUNGS = 0.04  # below this share of dark enclosed regions the slice shows no lungs to crop to


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level (in [0, 1]) that best splits `values` into a darker and a brighter class (Otsu, 64 bins)."""
    counts, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    weight = np.cumsum(counts) / counts.sum()
    mean = np.cumsum(counts * edges[:-1]) / counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.nan_to_num((mean[-1] * weight - mean) ** 2 / (weight * (1 - weight)), nan=-1.0, posinf=-1.0)
    return float(edges[np.argmax(between) + 1])


def enclosed(dark: np.ndarray) -> tuple[np.ndarray, int]:
    """The connected `dark` regions that do not reach the image border (labels, 0 elsewhere), and their count
    before that removal: on a CT slice, the lungs inside the body; the air outside reaches the border."""
    labels, count = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, border), 0, labels), count


def lung_box(pixels: np.ndarray) -> Box | None:
    """Bounding box of the enclosed dark regions of a lung-window slice in [0, 1], or None when there are none."""
    height, width = pixels.shape
    thumbnail = F.interpolate(torch.as_tensor(np.ascontiguousarray(pixels), dtype=torch.float32)[None, None],
                              size=(THUMBNAIL, THUMBNAIL), mode="bilinear", antialias=True, align_corners=False)
    small = thumbnail[0, 0].numpy()
    labels, count = enclosed(ndimage.binary_opening(small < otsu_threshold(small)))
    sizes = np.bincount(labels.ravel(), minlength=count + 1) / small.size
    keep = [label for label in range(1, count + 1) if sizes[label] >= MIN_REGION]
    if sizes[keep].sum() < MIN_LUNGS:
        return None
    rows, columns = np.nonzero(np.isin(labels, keep))
    scale_y, scale_x = height / THUMBNAIL, width / THUMBNAIL
    return (int(rows.min() * scale_y), int(np.ceil((rows.max() + 1) * scale_y)),
            int(columns.min() * scale_x), int(np.ceil((columns.max() + 1) * scale_x)))


def mask_box(mask: np.ndarray, shape: tuple[int, int]) -> Box | None:
    """Bounding box of a lung mask (any size, e.g. a segmenter's output grid) in an image of `shape`, or None when
    the mask is empty: the box of the X-ray lung-focused input, found by the lung segmenter."""
    rows, columns = np.nonzero(np.asarray(mask, dtype=bool))
    if rows.size == 0:
        return None
    scale_y, scale_x = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
    return (int(rows.min() * scale_y), min(shape[0], int(np.ceil((rows.max() + 1) * scale_y))),
            int(columns.min() * scale_x), min(shape[1], int(np.ceil((columns.max() + 1) * scale_x))))


def widen(box: Box, margin: float, shape: tuple[int, int]) -> Box:
    """`box` grown by `margin` times its height and width on each side, clipped to an image of `shape`."""
    top, bottom, left, right = box
    grow_y, grow_x = round((bottom - top) * margin), round((right - left) * margin)
    return max(0, top - grow_y), min(shape[0], bottom + grow_y), max(0, left - grow_x), min(shape[1], right + grow_x)
