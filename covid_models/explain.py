"""Class activation maps (Grad-CAM and its relatives) on a classifier's target layer.

Written here rather than called from pytorch-grad-cam, which the tests keep as the reference the maps are
compared with: that package imports matplotlib, OpenCV, scikit-learn and ttach (about 100 MB of the
dashboard's 1 GB memory budget), and back-propagates through the whole network. Here the target layer's
output is cut from the graph and made a leaf, so gradients run through the head only, and the hook is
removed before a call returns, so a long session of heatmaps leaves neither hooks nor graphs behind.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covid_models.inference import Classifier
from covid_models.io import Scan

METHODS = ("gradcam", "gradcam++", "eigencam", "hirescam", "scorecam", "xgradcam", "layercam", "ablationcam")
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "hirescam": "HiResCAM",
                 "scorecam": "Score-CAM (slow)", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
                 "ablationcam": "Ablation-CAM (slow)"}
# Slow methods run one forward pass per channel of the target layer; they report progress.
SLOW_METHODS = frozenset({"scorecam", "ablationcam"})
GRADIENT_METHODS = frozenset({"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"})
# Score-CAM: masked images per forward pass of the whole network. Larger batches were no faster here, and 16
# images of 224 pixels held 300 MB more at the peak (the dashboard has 1 GB in all).
SCORE_BATCH = 4
# Ablation-CAM: ablated copies of the target layer's output per pass through the layers after it (the head:
# small), each pass also running the layers before the target once.
ABLATION_BATCH = 64

Progress = Callable[[float], None]  # called with the fraction done, from 0 to 1


class ExplainError(ValueError):
    """An unknown CAM method or class."""


@contextmanager
def _target_output(layer: nn.Module, *, leaf: bool = False,
                   replace: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
    """Captures `layer`'s output in a forward pass inside the block: [activations] or, with `leaf`, [activations, leaf].

    The activations are the tensor the next layers receive, so an in-place op after the layer (DenseNet's
    final ReLU) shows in them once the pass is over, as in pytorch-grad-cam. leaf: that tensor is computed
    from a leaf that requires grad and is cut from the layers before it, so that a backward pass stops there
    and gives the gradient of the layer's output. replace: the output is swapped for this tensor
    (Ablation-CAM's ablated channels).
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if replace is not None:
            return replace
        if not leaf:
            captured.append(output.detach())
            return None
        cut = output.detach().requires_grad_(True)
        passed_on = cut.clone()  # a leaf may not be changed in place; this copy may
        captured.extend([passed_on, cut])
        return passed_on

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _gradient_cam(method: str, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(h, w) map from the target layer's activations and the target score's gradients, both (C, h, w)."""
    spatial = (1, 2)
    if method == "hirescam":
        return (gradients * activations).sum(0)
    if method == "layercam":
        return (gradients.clamp(min=0) * activations).sum(0)
    if method == "gradcam":
        weights = gradients.mean(spatial)
    elif method == "gradcam++":
        squared = gradients ** 2
        alpha = squared / (2 * squared + activations.sum(spatial, keepdim=True) * squared * gradients + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.clamp(min=0) * alpha).sum(spatial)
    else:  # xgradcam
        weights = (gradients * activations / (activations.sum(spatial, keepdim=True) + 1e-7)).sum(spatial)
    return (weights[:, None, None] * activations).sum(0)


def _eigen_cam(activations: torch.Tensor) -> torch.Tensor:
    """Projection of each position's activation vector on the first principal component (EigenCAM)."""
    channels = activations.shape[0]
    positions = np.nan_to_num(activations.reshape(channels, -1).T.numpy())
    centred = positions - positions.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return torch.from_numpy((centred @ vt[0]).reshape(activations.shape[1:]).astype(np.float32))


def _score_weights(model: nn.Module, inputs: torch.Tensor, activations: torch.Tensor, index: int,
                   progress: Progress | None) -> torch.Tensor:
    """Score-CAM: softmax over channels of the class score of the image masked by each upsampled channel.

    Channels are upsampled a batch at a time: all 1280 of them at 224 pixels would hold 250 MB at once.
    """
    channels = activations.shape[0]
    scores = []
    for start in range(0, channels, SCORE_BATCH):
        upsampled = F.interpolate(activations[None, start:start + SCORE_BATCH], size=inputs.shape[-2:],
                                  mode="bilinear", align_corners=True)[0]
        flat = upsampled.flatten(1)
        low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        masks = (upsampled - low) / (high - low + 1e-8)
        scores.append(model(inputs * masks[:, None])[:, index])
        if progress is not None:
            progress(min(1.0, (start + SCORE_BATCH) / channels))
    return torch.softmax(torch.cat(scores).float(), dim=0)


def _ablation_weights(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, activations: torch.Tensor,
                      original: float, index: int, progress: Progress | None) -> torch.Tensor:
    """Ablation-CAM: relative drop of the class score when one channel of the target layer is set to zero.

    Each pass runs the layers before the target on the one image and the layers after it on a batch of
    ablated copies of its output (the target layers of the registry end the feature extractor, so what
    follows treats each copy on its own).
    """
    channels = activations.shape[0]
    scores = []
    for start in range(0, channels, ABLATION_BATCH):
        ablated_channels = torch.arange(start, min(start + ABLATION_BATCH, channels))
        ablated = activations[None].repeat(len(ablated_channels), 1, 1, 1)
        ablated[torch.arange(len(ablated_channels)), ablated_channels] = 0
        with _target_output(layer, replace=ablated):
            scores.append(model(inputs)[:, index])
        if progress is not None:
            progress(min(1.0, (start + ABLATION_BATCH) / channels))
    return (original - torch.cat(scores).float()) / original


def class_activation_map(classifier: Classifier, inputs: torch.Tensor, method: str, index: int,
                         progress: Progress | None = None) -> torch.Tensor:
    """The raw map (h, w) of `method` for class `index` on one preprocessed input (1, C, S, S), before ReLU."""
    model, layer = classifier.model.eval(), classifier.cam_layer
    if method in GRADIENT_METHODS:
        with torch.enable_grad(), _target_output(layer, leaf=True) as captured:
            score = model(inputs)[0, index]
            activations, leaf = captured
            (gradients,) = torch.autograd.grad(score, leaf)
        return _gradient_cam(method, activations.detach()[0], gradients[0])
    with torch.no_grad():
        with _target_output(layer) as captured:
            original = float(model(inputs)[0, index])
        activations = captured[0][0]
        if method == "eigencam":
            return _eigen_cam(activations)
        if method == "scorecam":
            weights = _score_weights(model, inputs, activations, index, progress)
        else:
            weights = _ablation_weights(model, layer, inputs, activations, original, index, progress)
    return (weights[:, None, None] * activations).sum(0)


def heatmap(classifier: Classifier, image: Scan | np.ndarray, method: str = "gradcam",
            target_class: str | None = None, progress: Progress | None = None,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """CAM for `target_class` (default: the positive class) as float32 (H, W) in [0, 1] at the image's size
    (or at `size`, e.g. the display size, so that no full-size map of a large image is ever made).

    The map is rectified, resized bilinearly and scaled to [0, 1]; an all-zero map stays zero.
    """
    if method not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    classes = classifier.card.classes
    target_class = target_class or classifier.card.positive_class or classes[0]
    if target_class not in classes:
        raise ExplainError(f"class {target_class!r} is not one of {classes}")
    pixels = classifier.card.preprocessing.model_pixels(image)
    inputs = classifier.to_input(pixels)[None]
    cam = class_activation_map(classifier, inputs, method, classes.index(target_class), progress).float()
    resized = F.interpolate(cam.clamp(min=0)[None, None], size=tuple(size or pixels.shape), mode="bilinear",
                            align_corners=False)[0, 0]
    low, high = float(resized.min()), float(resized.max())
    return ((resized - low) / (high - low) if high > low else torch.zeros_like(resized)).numpy().astype(np.float32)
