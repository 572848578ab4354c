"""Class activation maps (Grad-CAM and its relatives) on a classifier's target layer.

Written here rather than called from pytorch-grad-cam, which the tests keep as the reference the maps are
compared with: that package imports matplotlib, OpenCV, scikit-learn and ttach (about 100 MB of the
dashboard's 1 GB memory budget), and back-propagates through the whole network. Here the target layer's
output is cut from the graph and made a leaf, so gradients run through the head only, and the hook is
removed before a call returns, so a long session of heatmaps leaves neither hooks nor graphs behind.
Each method is one small class overriding one hook of `BaseCAM`, as in pytorch-grad-cam; `CAMS` lists them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covid_models.imaging.scan import Scan
from covid_models.models.inference import Classifier, Prediction, penultimate_layer

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


@dataclass(frozen=True)
class LayerPass:
    """What a forward pass gave at the target layer, for one image and one class: all a method needs."""

    model: nn.Module
    layer: nn.Module
    inputs: torch.Tensor  # (1, C, S, S), preprocessed
    index: int  # the class
    activations: torch.Tensor  # (C, h, w): the target layer's output
    gradients: torch.Tensor | None  # (C, h, w): the class score's gradient there (gradient methods only)
    score: float  # the class score (logit) of the unchanged image
    progress: Progress | None


class BaseCAM:
    """A CAM method, as in pytorch-grad-cam: one subclass per method, overriding one hook.

    Most methods weigh the target layer's channels (`weights`); the others build the map another way
    (`cam_image`). `gradients` says whether the pass must back-propagate the class score to the layer.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    gradients: ClassVar[bool] = True
    slow: ClassVar[bool] = False  # one forward pass per channel: reports progress

    def weights(self, layer_pass: LayerPass) -> torch.Tensor:
        """(C,) weight of each channel of the target layer."""
        raise NotImplementedError

    def cam_image(self, layer_pass: LayerPass) -> torch.Tensor:
        """The raw (h, w) map, before ReLU: the weighted sum of the channels by default."""
        return (self.weights(layer_pass)[:, None, None] * layer_pass.activations).sum(0)


class GradCAM(BaseCAM):
    name, label = "gradcam", "Grad-CAM"

    def weights(self, layer_pass: LayerPass) -> torch.Tensor:
        return layer_pass.gradients.mean((1, 2))


class GradCAMPlusPlus(BaseCAM):
    name, label = "gradcam++", "Grad-CAM++"

    def weights(self, layer_pass: LayerPass) -> torch.Tensor:
        gradients, activations = layer_pass.gradients, layer_pass.activations
        squared = gradients ** 2
        alpha = squared / (2 * squared + activations.sum((1, 2), keepdim=True) * squared * gradients + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (gradients.clamp(min=0) * alpha).sum((1, 2))


class XGradCAM(BaseCAM):
    name, label = "xgradcam", "XGrad-CAM"

    def weights(self, layer_pass: LayerPass) -> torch.Tensor:
        activations = layer_pass.activations
        return (layer_pass.gradients * activations / (activations.sum((1, 2), keepdim=True) + 1e-7)).sum((1, 2))


class HiResCAM(BaseCAM):
    name, label = "hirescam", "HiResCAM"

    def cam_image(self, layer_pass: LayerPass) -> torch.Tensor:
        """Gradient times activation at each position, summed over channels (no spatial averaging)."""
        return (layer_pass.gradients * layer_pass.activations).sum(0)


class LayerCAM(BaseCAM):
    name, label = "layercam", "LayerCAM"

    def cam_image(self, layer_pass: LayerPass) -> torch.Tensor:
        """Positive gradient times activation at each position, summed over channels."""
        return (layer_pass.gradients.clamp(min=0) * layer_pass.activations).sum(0)


class EigenCAM(BaseCAM):
    name, label, gradients = "eigencam", "EigenCAM", False

    def cam_image(self, layer_pass: LayerPass) -> torch.Tensor:
        """Projection of each position's activation vector on the first principal component."""
        activations = layer_pass.activations
        channels = activations.shape[0]
        positions = np.nan_to_num(activations.reshape(channels, -1).T.numpy())
        centred = positions - positions.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return torch.from_numpy((centred @ vt[0]).reshape(activations.shape[1:]).astype(np.float32))


class ScoreCAM(BaseCAM):
    name, label, gradients, slow = "scorecam", "Score-CAM (slow)", False, True

    def weights(self, layer_pass: LayerPass) -> torch.Tensor:
        """Softmax over channels of the class score of the image masked by each upsampled channel.

        Channels are upsampled a batch at a time: all 1280 of them at 224 pixels would hold 250 MB at once.
        """
        inputs, activations = layer_pass.inputs, layer_pass.activations
        channels = activations.shape[0]
        scores = []
        for start in range(0, channels, SCORE_BATCH):
            upsampled = F.interpolate(activations[None, start:start + SCORE_BATCH], size=inputs.shape[-2:],
                                      mode="bilinear", align_corners=True)[0]
            flat = upsampled.flatten(1)
            low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
            masks = (upsampled - low) / (high - low + 1e-8)
            scores.append(layer_pass.model(inputs * masks[:, None])[:, layer_pass.index])
            if layer_pass.progress is not None:
                layer_pass.progress(min(1.0, (start + SCORE_BATCH) / channels))
        return torch.softmax(torch.cat(scores).float(), dim=0)


class AblationCAM(BaseCAM):
    name, label, gradients, slow = "ablationcam", "Ablation-CAM (slow)", False, True

    def weights(self, layer_pass: LayerPass) -> torch.Tensor:
        """Relative drop of the class score when one channel of the target layer is set to zero.

        Each pass runs the layers before the target on the one image and the layers after it on a batch of
        ablated copies of its output (the target layers of the registry end the feature extractor, so what
        follows treats each copy on its own).
        """
        activations = layer_pass.activations
        channels = activations.shape[0]
        scores = []
        for start in range(0, channels, ABLATION_BATCH):
            ablated_channels = torch.arange(start, min(start + ABLATION_BATCH, channels))
            ablated = activations[None].repeat(len(ablated_channels), 1, 1, 1)
            ablated[torch.arange(len(ablated_channels)), ablated_channels] = 0
            with _target_output(layer_pass.layer, replace=ablated):
                scores.append(layer_pass.model(layer_pass.inputs)[:, layer_pass.index])
            if layer_pass.progress is not None:
                layer_pass.progress(min(1.0, (start + ABLATION_BATCH) / channels))
        return (layer_pass.score - torch.cat(scores).float()) / layer_pass.score


CAMS: dict[str, BaseCAM] = {cam.name: cam() for cam in (GradCAM, GradCAMPlusPlus, EigenCAM, HiResCAM, ScoreCAM,
                                                          XGradCAM, LayerCAM, AblationCAM)}
METHODS = tuple(CAMS)
METHOD_LABELS = {name: cam.label for name, cam in CAMS.items()}
SLOW_METHODS = frozenset(name for name, cam in CAMS.items() if cam.slow)


def _gradient_pass(classifier: Classifier, inputs: torch.Tensor, index: int, progress: Progress | None = None
                   ) -> tuple[LayerPass, torch.Tensor, torch.Tensor]:
    """One forward pass with the target layer cut out as a leaf, and the class score's gradient there (through
    the head only): the layer pass, and the logits and feature vector the prediction needs, from the same pass."""
    model, layer = classifier.model.eval(), classifier.cam_layer
    features: list[torch.Tensor] = []
    hook = penultimate_layer(model).register_forward_hook(lambda _m, inp, _o: features.append(inp[0].detach()))
    try:
        with torch.enable_grad(), _target_output(layer, leaf=True) as captured:
            logits = model(inputs)
            activations, leaf = captured
            (gradients,) = torch.autograd.grad(logits[0, index], leaf)
    finally:
        hook.remove()
    logits = logits.detach()
    layer_pass = LayerPass(model, layer, inputs, index, activations.detach()[0], gradients[0],
                           float(logits[0, index]), progress)
    return layer_pass, logits, features[0].float()


def class_activation_map(classifier: Classifier, inputs: torch.Tensor, method: str, index: int,
                         progress: Progress | None = None) -> torch.Tensor:
    """The raw map (h, w) of `method` for class `index` on one preprocessed input (1, C, S, S), before ReLU."""
    model, layer, cam = classifier.model.eval(), classifier.cam_layer, CAMS[method]
    if cam.gradients:
        return cam.cam_image(_gradient_pass(classifier, inputs, index, progress)[0])
    with torch.no_grad():
        with _target_output(layer) as captured:
            score = float(model(inputs)[0, index])
        return cam.cam_image(LayerPass(model, layer, inputs, index, captured[0][0], None, score, progress))


def heatmap(classifier: Classifier, image: Scan | np.ndarray, method: str = "gradcam",
            target_class: str | None = None, progress: Progress | None = None,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """CAM for `target_class` (default: the positive class) as float32 (H, W) in [0, 1] at the image's size
    (or at `size`, e.g. the display size, so that no full-size map of a large image is ever made).

    The map is rectified, resized bilinearly and scaled to [0, 1]; an all-zero map stays zero.
    """
    index = _class_index(classifier, method, target_class)
    pixels = classifier.card.preprocessing.model_pixels(image)
    box = classifier.crop_box(pixels)
    inputs = classifier.to_input(pixels, box)[None]
    cam = class_activation_map(classifier, inputs, method, index, progress).float()
    return place_map(cam, box, tuple(pixels.shape), size)


def predict_and_map(classifier: Classifier, image: Scan | np.ndarray, method: str = "gradcam",
                    size: tuple[int, int] | None = None) -> tuple[Prediction, np.ndarray]:
    """The prediction and the positive-class map of a gradient method (see `heatmap`) from one forward pass.

    Equal to `classifier.predict(image)` and `heatmap(classifier, image, method, size=size)`, for the cost of
    one forward pass and a backward pass through the head instead of two forward passes.
    """
    if method not in METHODS or not CAMS[method].gradients:
        raise ExplainError(f"{method!r} is not a gradient method; use predict and heatmap")
    pixels = classifier.card.preprocessing.model_pixels(image)
    box = classifier.crop_box(pixels)
    inputs = classifier.to_input(pixels, box)[None]
    layer_pass, logits, features = _gradient_pass(classifier, inputs, _class_index(classifier, method, None))
    prediction = classifier.predictions(classifier.calibrate(logits), features)[0]
    cam = CAMS[method].cam_image(layer_pass).float()
    return prediction, place_map(cam, box, tuple(pixels.shape), size)


def _class_index(classifier: Classifier, method: str, target_class: str | None) -> int:
    """The index of `target_class` (default: the positive class), after checking the method and the class."""
    if method not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    classes = classifier.card.classes
    target_class = target_class or classifier.card.positive_class or classes[0]
    if target_class not in classes:
        raise ExplainError(f"class {target_class!r} is not one of {classes}")
    return classes.index(target_class)


def place_map(cam: torch.Tensor, box: tuple[int, int, int, int], shape: tuple[int, int],
              size: tuple[int, int] | None = None) -> np.ndarray:
    """A raw map over the model's crop `box` of an image of `shape` -> rectified, [0, 1], at the image's size (or
    `size`), zero outside the crop."""
    height, width = size or shape
    scale_y, scale_x = height / shape[0], width / shape[1]
    top, bottom = round(box[0] * scale_y), max(round(box[0] * scale_y) + 1, round(box[1] * scale_y))
    left, right = round(box[2] * scale_x), max(round(box[2] * scale_x) + 1, round(box[3] * scale_x))
    placed = torch.zeros((height, width), dtype=torch.float32)
    placed[top:bottom, left:right] = F.interpolate(cam.clamp(min=0)[None, None], size=(bottom - top, right - left),
                                                   mode="bilinear", align_corners=False)[0, 0]
    low, high = float(placed.min()), float(placed.max())
    return ((placed - low) / (high - low) if high > low else torch.zeros_like(placed)).numpy().astype(np.float32)
