"""Pictures for people: masks and heatmaps drawn over the greyscale image, as RGB uint8 arrays the app shows.

Every function takes the image either as a greyscale (H, W) array in [0, 1] (a `Scan`'s pixels) or as an
(H, W, 3) uint8 picture returned by another function here, so layers can be stacked (lungs, then infection).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from covid_models.models.segmentation import resize_map

LUNG_COLOR = (64, 160, 255)
INFECTION_COLOR = (255, 64, 64)
DISPLAY_SIDE = 768  # the dashboard shows and caches images, heatmaps and masks at no more than this size


def display_size(shape: tuple[int, int], side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) no larger than `side` on the longest side, aspect kept."""
    height, width = shape
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def for_display(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float image or map (bilinear, smoothed when shrinking) or a boolean mask (nearest) at `shape`."""
    if array.shape[:2] == tuple(shape):
        return array
    if array.dtype == bool:
        image = Image.fromarray(array.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        return np.asarray(image) > 127
    image = Image.fromarray(np.asarray(array, dtype=np.float32), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Greyscale [0, 1] (H, W) -> (H, W, 3) uint8; an (H, W, 3) uint8 picture is returned as a copy."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image.copy()
    if image.ndim != 2:
        raise ValueError(f"expected a greyscale (H, W) image or an (H, W, 3) uint8 picture, got {image.shape}")
    grey = np.round(np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def mask_contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The inner border of a boolean mask, `width` pixels thick."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def mask_overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = LUNG_COLOR, alpha: float = 0.3,
                 contour_width: int = 2) -> np.ndarray:
    """The image with the mask as a translucent fill (`alpha`) and an opaque contour (0 = no contour)."""
    picture = to_rgb(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != picture.shape[:2]:
        raise ValueError(f"the mask is {mask.shape} but the image is {picture.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    tint = np.asarray(color, dtype=np.float32)
    blended = picture.astype(np.float32)
    blended[mask] = (1 - alpha) * blended[mask] + alpha * tint
    if contour_width > 0:
        blended[mask_contour(mask, contour_width)] = tint
    return np.round(blended).astype(np.uint8)


# Matplotlib's "jet" as (position, value) anchors per channel, linearly interpolated between them; written
# out so that the app needs no matplotlib (tests compare the table with matplotlib's).
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
COLORMAPS = ("jet",)


def colormap_lut(name: str = "jet") -> np.ndarray:
    """A colormap as a (256, 3) uint8 lookup table."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; available: {', '.join(COLORMAPS)}")
    positions = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(positions, *zip(*_JET[channel], strict=True)) for channel in ("red", "green", "blue")]
    return np.round(np.stack(channels, axis=1) * 255).astype(np.uint8)


def heatmap_overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """A CAM heatmap (values in [0, 1], any size; resized to the image) blended over the image in a colormap."""
    picture = to_rgb(pixels)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    heat = np.clip(np.nan_to_num(resize_map(heatmap, picture.shape[:2])), 0.0, 1.0)
    colours = colormap_lut(colormap)[np.round(heat * 255).astype(np.intp)].astype(np.float32)
    return np.round((1 - alpha) * picture.astype(np.float32) + alpha * colours).astype(np.uint8)


def colour_scale(width: int = 256, height: int = 12, colormap: str = "jet") -> np.ndarray:
    """A horizontal bar of the heatmap's colours, low (left) to high (right), as (height, width, 3) uint8."""
    lut = colormap_lut(colormap)
    return np.repeat(lut[np.round(np.linspace(0, 255, width)).astype(np.intp)][None], height, axis=0)
