"""pytorch-grad-cam run on a covid_models Classifier: the reference covid_models.explain is held to.

Shared by tests/test_explain.py (same maps) and scripts/benchmark_cam.py (time of the same map).
pytorch-grad-cam is a test tool (requirements-dev.txt), imported only when called.
"""
from __future__ import annotations

import numpy as np
import torch

from covid_models.inference import Classifier


def reference_cam(classifier: Classifier, pixels: np.ndarray, method: str, target_class: str) -> np.ndarray:
    """pytorch-grad-cam's map (at the network's input size) of `method` for `target_class`.

    Its backward pass reaches the weights, which a loaded Classifier keeps frozen: they are made trainable
    for the call, and frozen again with no gradient left on them.
    """
    import pytorch_grad_cam as cams
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kinds = {"gradcam": cams.GradCAM, "gradcam++": cams.GradCAMPlusPlus, "eigencam": cams.EigenCAM,
             "hirescam": cams.HiResCAM, "scorecam": cams.ScoreCAM, "xgradcam": cams.XGradCAM,
             "layercam": cams.LayerCAM, "ablationcam": cams.AblationCAM}
    target = ClassifierOutputTarget(classifier.card.classes.index(target_class))
    classifier.model.requires_grad_(True)
    try:
        with kinds[method](model=classifier.model, target_layers=[classifier.cam_layer]) as cam, torch.enable_grad():
            return cam(input_tensor=classifier.to_input(pixels)[None], targets=[target])[0]
    finally:
        classifier.model.zero_grad(set_to_none=True)
        classifier.model.requires_grad_(False).eval()
