"""Pixel steps both image readers share: grey by luminance, min-max scaling, block-mean reduction, the final form.

Raster images and DICOM files reach the same `Scan` contract (2-D float32 in [0, 1]) through the same few steps,
kept here so that a reduction or a grey conversion means the same whatever the format. An image larger than
`WORKING_SIDE` on its longest side is reduced by averaging blocks of pixels, a strip at a time, so that only the
working size is ever held as float32.
"""
from __future__ import annotations

import numpy as np

from covid_models.imaging.scan import MAX_ABS_VALUE, WORKING_SIDE, ImageReadError

_LUMA = (0.299, 0.587, 0.114)


def finish_pixels(pixels: np.ndarray) -> np.ndarray:
    """The contract every Scan meets: 2-D, float32, finite, in [0, 1], C-contiguous."""
    pixels = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luminance, channel by channel in float32 to bound memory on large images."""
    grey = np.zeros(rgb.shape[:2], dtype=np.float32)
    for channel, weight in enumerate(_LUMA):
        grey += rgb[..., channel].astype(np.float32) * np.float32(weight)
    return grey


def full_range(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max over the finite values; a constant image becomes black."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ImageReadError("This image contains no valid pixel values. Export it again or upload another file.")
    lo, hi = float(finite.min()), float(finite.max())
    _check_value_range(lo, hi)
    scaled = (values - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
    return scaled, lo, hi


def _check_value_range(lo: float, hi: float) -> None:
    """Values near float32's limit overflow every scaling (the image would come out blank): refuse them."""
    if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
        raise ImageReadError(
            f"This image's pixel values are out of range ({lo:.3g} to {hi:.3g}; images stay far within "
            f"+-{MAX_ABS_VALUE:.0e}), so it cannot be shown or analysed. The file is damaged or was exported with "
            "a wrong scale; export it again."
        )


def reduction_factor(width: int, height: int, side: int = WORKING_SIDE) -> int:
    """The block size that brings the longest side to at most `side` (1: the image is kept as it is)."""
    return max(1, -(-max(width, height) // side))


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block of an (H, W) or (H, W, C) array as float32, a strip at a time.

    Edge blocks that the size does not fill are averaged over the pixels they hold. Strips bound the float32
    temporaries to a few MB whatever the image size.
    """
    strip = factor * 64
    parts = []
    for top in range(0, values.shape[0], strip):
        block = values[top:top + strip]
        rows = np.arange(0, block.shape[0], factor)
        columns = np.arange(0, block.shape[1], factor)
        sums = np.add.reduceat(np.add.reduceat(block, rows, axis=0, dtype=np.float32), columns, axis=1)
        counts = np.outer(np.diff(rows, append=block.shape[0]), np.diff(columns, append=block.shape[1]))
        parts.append(sums / counts.reshape(counts.shape + (1,) * (block.ndim - 2)).astype(np.float32))
    return np.concatenate(parts)


def reduced_note(width: int, height: int, shape: tuple[int, ...]) -> str:
    """The note a reduced image carries: both sizes, and why nothing the models or the display use is lost."""
    return (f"reduced from {width} x {height} to {shape[1]} x {shape[0]} pixels for analysis (block mean); "
            f"models read at most 512 and the display shows at most 768 pixels")
