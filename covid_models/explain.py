"""Class activation maps through pytorch-grad-cam, with hooks released after every call.

Each call opens the CAM object as a context manager, so its forward/backward hooks are removed when
it returns: a long review session computing hundreds of heatmaps does not accumulate hooks or memory.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from covid_models.inference import Classifier
from covid_models.io import Scan

# Slow methods run one forward pass per feature channel; the app shows a progress indicator for them.
SLOW_METHODS = frozenset({"scorecam", "ablationcam"})


def _methods() -> dict[str, Callable]:
    from pytorch_grad_cam import (
        AblationCAM,
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        XGradCAM,
    )

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "hirescam": HiResCAM,
            "scorecam": ScoreCAM, "xgradcam": XGradCAM, "layercam": LayerCAM, "ablationcam": AblationCAM}


METHODS = ("gradcam", "gradcam++", "eigencam", "hirescam", "scorecam", "xgradcam", "layercam", "ablationcam")
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "hirescam": "HiResCAM",
                 "scorecam": "Score-CAM (slow)", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
                 "ablationcam": "Ablation-CAM (slow)"}


class ExplainError(ValueError):
    """An unknown CAM method or class."""


def heatmap(classifier: Classifier, image: Scan | np.ndarray, method: str = "gradcam",
            target_class: str | None = None) -> np.ndarray:
    """CAM for `target_class` (default: the positive class) as float32 (H, W) in [0, 1] at the image's size."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = _methods()
    if method not in methods:
        raise ExplainError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    classes = classifier.card.classes
    target_class = target_class or classifier.card.positive_class or classes[0]
    if target_class not in classes:
        raise ExplainError(f"class {target_class!r} is not one of {classes}")
    pixels = image.pixels if isinstance(image, Scan) else image
    inputs = classifier.to_input(pixels)[None]
    kwargs = {"batch_size": 64} if method in SLOW_METHODS else {}
    with methods[method](model=classifier.model, target_layers=[classifier.cam_layer], **kwargs) as cam, \
            torch.enable_grad():
        grayscale = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(classes.index(target_class))])[0]
    classifier.model.eval()
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32))[None, None],
                            size=pixels.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    low, high = float(resized.min()), float(resized.max())
    return ((resized - low) / (high - low) if high > low else np.zeros_like(resized)).astype(np.float32)
