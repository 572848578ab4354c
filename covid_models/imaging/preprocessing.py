"""The preprocessing contract between a checkpoint and its inputs, and training augmentations.

A `Preprocessing` record is stored in every checkpoint's card, so inference applies exactly the
transform the model was trained with: greyscale [0, 1] image -> resized square -> replicated to
`channels` -> normalised with the backbone's mean/std.

The canonical CT input: a CT model's card names one fixed HU window (`hu_window`, the lung window by
default). A DICOM CT slice (HU kept in `Scan.modality_values`) is windowed with it, whatever window the
file or the viewer uses; a PNG/JPEG slice has no HU and is taken as already windowed. So a display window
never reaches the model, and training (JPEG slices) and inference (DICOM slices, CT volumes) meet in one
[0, 1] image.

The lung-focused input (`lung_crop`, a margin): the image is cut to the lungs' box before it is resized. On CT the
box is found on the lung-window slice without a network (`covid_models.imaging.lung_box`), so a full scan field and a
figure crop framed around the chest reach the model alike. On X-ray it is the box of the lung segmenter's mask
(`lung_segmenter` pins that checkpoint by name and weights hash; the classifier loads it, see
`Classifier.crop_box`), so text labels, side markers, borders and most of the devices outside the lungs are cut.

Intensity normalisation (`equalise`): the (cropped) image is histogram-equalised, so a film's exposure, its
export pipeline's contrast curve or a website's brightening (any monotone change of grey levels) no longer
reaches the model, only the ranks of the grey levels do.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covid_models.imaging.lung_box import Box, lung_box, mask_box, widen
from covid_models.imaging.scan import Scan, apply_window

LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)  # (centre, width) in HU: the CT models' input window


@dataclass(frozen=True)
class Preprocessing:
    """How a greyscale image in [0, 1] becomes the network's input tensor."""

    image_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    hu_window: tuple[float, float] | None = None  # (centre, width) applied to CT HU; None for X-ray models
    lung_crop: float | None = None  # crop to the lungs' box widened by this share per side; None: whole image
    lung_segmenter: tuple[str, str] | None = None  # (name, sha256) of the segmenter whose mask gives the box
    equalise: bool = False  # histogram-equalise the image after the crop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        window, crop, segmenter = data.get("hu_window"), data.get("lung_crop"), data.get("lung_segmenter")
        return cls(
            image_size=int(data["image_size"]),
            channels=int(data["channels"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            hu_window=None if window is None else (float(window[0]), float(window[1])),
            lung_crop=None if crop is None else float(crop),
            lung_segmenter=None if segmenter is None else (str(segmenter[0]), str(segmenter[1])),
            equalise=bool(data.get("equalise", False)),
        )

    def window_hu(self, hu: np.ndarray) -> np.ndarray:
        """HU values (any shape) -> the model's [0, 1] input under the card's fixed window."""
        if self.hu_window is None:
            raise ValueError("this model takes no HU input (its card names no hu_window)")
        return apply_window(hu, *self.hu_window)

    def model_pixels(self, image: Scan | np.ndarray) -> np.ndarray:
        """The (H, W) [0, 1] image a model sees: DICOM CT through the card's HU window, everything else as read.

        Only a CT DICOM's HU values are re-windowed; a viewer's window preset is never an input here.
        """
        if not isinstance(image, Scan):
            return image
        if self.hu_window is not None and image.modality_values is not None and image.metadata.dicom_modality == "CT":
            return self.window_hu(image.modality_values)
        return image.pixels

    def crop_box(self, pixels: np.ndarray | torch.Tensor, lungs: np.ndarray | None = None) -> Box:
        """The part of a model image (H, W) the network sees: the lungs' box plus margin, else the whole image.

        `lungs` is the lung segmenter's mask of `pixels` (any size), required when the card names a segmenter;
        an empty mask (no lungs found) keeps the whole image.
        """
        shape = tuple(pixels.shape)
        whole = (0, shape[0], 0, shape[1])
        if self.lung_crop is None:
            return whole
        if self.lung_segmenter is not None:
            if lungs is None:
                raise ValueError(f"this input is cropped to the mask of lung segmenter {self.lung_segmenter[0]!r}; "
                                 "pass its mask (Classifier.to_input does)")
            box = mask_box(lungs, shape)
        else:
            box = lung_box(np.asarray(pixels, dtype=np.float32))
        return whole if box is None else widen(box, self.lung_crop, shape)

    def crop(self, pixels: np.ndarray | torch.Tensor, lungs: np.ndarray | None = None) -> np.ndarray | torch.Tensor:
        top, bottom, left, right = self.crop_box(pixels, lungs)
        return pixels[top:bottom, left:right]

    def square(self, cropped: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The cropped (H, W) image -> equalised when the card says so -> (1, S, S): what the training cache holds."""
        return self.resize(equalise_histogram(np.asarray(cropped, dtype=np.float32)) if self.equalise else cropped)

    def resize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(H, W) image -> (1, S, S) float tensor; stretched so a CAM maps back by a plain resize."""
        image = torch.as_tensor(np.ascontiguousarray(pixels), dtype=torch.float32)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D greyscale image, got shape {tuple(image.shape)}")
        size = (self.image_size, self.image_size)
        resized = F.interpolate(image[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)
        return resized[0].clamp_(0.0, 1.0)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """(1, S, S) or (N, 1, S, S) in [0, 1] -> replicated to `channels` and normalised."""
        channel_dim = image.ndim - 3
        expanded = image.expand(*image.shape[:channel_dim], self.channels, *image.shape[-2:])
        shape = (self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(shape)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(shape)
        return (expanded - mean) / std

    def __call__(self, image: Scan | np.ndarray | torch.Tensor, lungs: np.ndarray | None = None) -> torch.Tensor:
        """A `Scan` (see `model_pixels`) or an (H, W) greyscale image in [0, 1] -> cropped (see `crop_box`) ->
        (channels, S, S) network input."""
        pixels = self.model_pixels(image) if isinstance(image, Scan) else image
        return self.normalise(self.square(self.crop(pixels, lungs)))


def equalise_histogram(pixels: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalisation of an image in [0, 1]: each grey level -> the share of pixels darker than or as dark
    as it (the lowest level present -> 0, the highest -> 1). A constant image is returned unchanged."""
    counts, _ = np.histogram(pixels, bins=bins, range=(0.0, 1.0))
    cdf = np.cumsum(counts)
    lowest = cdf[np.flatnonzero(counts)[0]] if cdf[-1] else 0
    if cdf[-1] == lowest:
        return pixels
    levels = np.clip((cdf - lowest) / (cdf[-1] - lowest), 0.0, 1.0).astype(np.float32)
    return levels[np.clip((pixels * bins).astype(np.int64), 0, bins - 1)]


@dataclass(frozen=True)
class Augmentation:
    """Radiograph-safe random transforms: geometry (rotation, shift, scale), intensity (brightness, contrast,
    gamma) and acquisition (resolution loss, JPEG re-compression), so a model cannot key on one window, one
    crop or one export pipeline (the UCSD CT positives are figure crops out of preprint PDFs).

    No vertical flip (anatomy is never upside down). Horizontal flip is off by default (the heart and the
    side markers of a radiograph sit on one side) and on for axial CT, whose COVID findings are bilateral.
    """

    max_rotation_deg: float = 10.0
    max_shift: float = 0.08
    scale_range: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: float = 0.0  # exponent drawn log-uniformly in [exp(-gamma), exp(gamma)]: a window-like jitter
    hflip: float = 0.0  # probability of a left-right mirror
    degrade: float = 0.0  # probability of a resolution loss (x0.35-0.8) and a JPEG re-compression (quality 30-90)

    @classmethod
    def for_modality(cls, modality: str) -> Augmentation:
        """The training augmentation of each modality (stored in the card's training record)."""
        if modality == "ct":
            return cls(max_rotation_deg=15.0, max_shift=0.1, scale_range=(0.8, 1.25), brightness=0.1, contrast=0.25,
                       gamma=0.4, hflip=0.5, degrade=0.3)
        return cls(max_rotation_deg=10.0, max_shift=0.08, scale_range=(0.9, 1.15), brightness=0.1, contrast=0.2,
                   gamma=0.3, degrade=0.3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(C, S, S) in [0, 1] -> randomly transformed, same shape, still in [0, 1]."""
        image = self.apply(image, self.sample(generator))[0]
        u = torch.rand(5, generator=generator).tolist()
        if u[0] < self.hflip:
            image = image.flip(-1)
        if self.gamma:
            image = image.clamp(1e-6, 1.0) ** math.exp((u[1] * 2 - 1) * self.gamma)
        if u[2] < self.degrade:
            image = _degrade(image, 0.35 + 0.45 * u[3], int(30 + 60 * u[4]))
        return image

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random affine matrix (2x3) plus brightness/contrast factors, packed in a vector."""
        u = torch.rand(6, generator=generator)
        angle = math.radians((u[0].item() * 2 - 1) * self.max_rotation_deg)
        scale = self.scale_range[0] + u[1].item() * (self.scale_range[1] - self.scale_range[0])
        tx, ty = ((u[2:4] * 2 - 1) * self.max_shift * 2).tolist()
        brightness = (u[4].item() * 2 - 1) * self.brightness
        contrast = 1 + (u[5].item() * 2 - 1) * self.contrast
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        return torch.tensor([cos, -sin, tx, sin, cos, ty, brightness, contrast])

    @staticmethod
    def apply(
        image: torch.Tensor, params: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply sampled parameters to an image and, geometrically only, to its mask (nearest)."""
        theta = params[:6].view(1, 2, 3).to(image.dtype)
        grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
        warped = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        brightness, contrast = params[6].item(), params[7].item()
        mean = warped.mean()
        warped = ((warped - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
        warped_mask = None
        if mask is not None:
            warped_mask = F.grid_sample(
                mask[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
            )[0]
        return warped, warped_mask


def _degrade(image: torch.Tensor, factor: float, quality: int) -> torch.Tensor:
    """Resolution loss (down by `factor`, back up bilinearly) followed by a JPEG round trip at `quality`."""
    import io

    from PIL import Image

    size = image.shape[-2:]
    small = [max(8, round(side * factor)) for side in size]
    image = F.interpolate(image[None], size=small, mode="bilinear", antialias=True, align_corners=False)
    image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)
    grey = (image[0] * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded)[None].expand_as(image).clone()


@dataclass(frozen=True)
class WindowJitter:
    """CT window augmentation in HU: the slice is re-windowed as if exported under a window near the card's.

    A training slice is a [0, 1] image under an export window (JPEG/PNG, HU gone); at inference a DICOM slice is
    windowed with the card's fixed `hu_window`. Source exports differ from that window, so each draw reads the pixels
    back to HU under the card's window (value v -> level - width / 2 + v * width) and windows them again with a level
    shifted by up to `level_shift` HU and a width scaled by a factor in `width_scale`, clipped to [0, 1]. Intensity
    only: a mask is never touched.
    """

    level_shift: float = 100.0  # HU, either way
    width_scale: tuple[float, float] = (0.8, 1.25)  # drawn log-uniformly

    def sample(self, generator: torch.Generator | None = None) -> tuple[float, float]:
        """(level shift in HU, width factor)."""
        u = torch.rand(2, generator=generator).tolist()
        low, high = (math.log(s) for s in self.width_scale)
        return (u[0] * 2 - 1) * self.level_shift, math.exp(low + u[1] * (high - low))

    def apply(self, image: torch.Tensor, window: tuple[float, float], shift: float, scale: float) -> torch.Tensor:
        """`image` in [0, 1] under `window` (centre, width) -> the same HU under (centre + shift, width * scale)."""
        level, width = window
        hu = level - width / 2 + image * width
        new_level, new_width = level + shift, width * scale
        return ((hu - (new_level - new_width / 2)) / new_width).clamp(0.0, 1.0)

    def __call__(self, image: torch.Tensor, window: tuple[float, float],
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(image, window, *self.sample(generator))
