"""Heatmaps: each CAM method gives the map pytorch-grad-cam (the reference implementation) gives.

covid_models.analysis.explain computes the maps itself (gradients through the head only, no heavy imports); these
tests hold it to the reference on several architectures, with untrained seeded networks on a chest-like
image. The two differ only in where the map is resized (the reference resizes to the network input first,
then to the image), which moves values by under 0.01 on a [0, 1] scale.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import tiny_card

from covid_models.analysis.explain import CAMS, METHODS, SLOW_METHODS, ExplainError, heatmap, predict_and_map
from covid_models.benchmarking import chest_like_png, reference_cam
from covid_models.imaging.io import read_image
from covid_models.models.architectures import build_model, get_architecture
from covid_models.models.inference import Classifier

TOLERANCE = 0.01  # largest difference allowed between the two maps, anywhere in the image
FAST_METHODS = [m for m in METHODS if m not in SLOW_METHODS]
IMAGE = read_image(chest_like_png(size=96, seed=3)).pixels


def classifier(architecture: str, size: int = 64, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    card = replace(tiny_card(), architecture=architecture,
                   preprocessing=get_architecture(architecture).preprocessing(size))
    return Classifier(build_model(architecture, len(card.classes)), card)


def reference(model: Classifier, pixels: np.ndarray, method: str, target_class: str) -> np.ndarray:
    """pytorch-grad-cam's map for `target_class`, resized and scaled the way heatmap() does."""
    grey = reference_cam(model, pixels, method, target_class)
    resized = F.interpolate(torch.from_numpy(np.float32(grey))[None, None], size=pixels.shape, mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    low, high = resized.min(), resized.max()
    return (resized - low) / (high - low) if high > low else np.zeros_like(resized)


def assert_same_maps(model: Classifier, method: str, **kwargs) -> None:
    """Same map as the reference for every class, and not all of them empty (an untrained network's
    rectified map for one class can be all zero, which would make that comparison empty)."""
    spreads = []
    for target_class in model.card.classes:
        ours = heatmap(model, IMAGE, method, target_class, **kwargs)
        assert ours.shape == IMAGE.shape and ours.dtype == np.float32
        assert np.abs(ours - reference(model, IMAGE, method, target_class)).max() < TOLERANCE, target_class
        spreads.append(ours.max() - ours.min())
    assert max(spreads) > 0.5


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("architecture", ["efficientnet_lite0", "resnet18",
                                          pytest.param("densenet121", marks=pytest.mark.slow),
                                          pytest.param("vgg16", marks=pytest.mark.slow)])
def test_each_method_matches_pytorch_grad_cam(architecture, method):
    """densenet121 applies an in-place ReLU after its target layer; vgg16's target layer is itself one.
    Inputs of 128 pixels give 4 x 4 maps: coarser ones magnify the resizing difference."""
    assert_same_maps(classifier(architecture, size=128), method)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SLOW_METHODS))
def test_slow_methods_match_pytorch_grad_cam(method):
    assert_same_maps(classifier("resnet18", size=64), method)  # 512 channels: one forward pass each


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SLOW_METHODS))
def test_slow_methods_report_their_progress_up_to_done(method):
    progress: list[float] = []
    heatmap(classifier("resnet18", size=32), IMAGE, method, progress=progress.append)
    assert len(progress) > 1 and progress == sorted(progress) and progress[-1] == 1.0


def test_the_heatmap_of_another_class_differs():
    model = classifier("efficientnet_lite0")
    covid = heatmap(model, IMAGE, "gradcam")
    other = heatmap(model, IMAGE, "gradcam", target_class="normal")
    assert not np.allclose(covid, other)


def test_a_heatmap_leaves_the_shared_network_as_it_was():
    model = classifier("efficientnet_lite0")
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    for method in FAST_METHODS:
        heatmap(model, IMAGE, method)
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())  # BN statistics too
    assert not model.model.training
    assert all(p.grad is None and not p.requires_grad for p in model.model.parameters())


def test_unknown_method_or_class_is_a_clear_error():
    model = classifier("efficientnet_lite0")
    with pytest.raises(ExplainError, match="unknown CAM method 'gradcam3'"):
        heatmap(model, IMAGE, "gradcam3")
    with pytest.raises(ExplainError, match="class 'flu' is not one of"):
        heatmap(model, IMAGE, target_class="flu")


@pytest.mark.parametrize("method", [m for m in FAST_METHODS if CAMS[m].gradients])
@pytest.mark.parametrize("architecture", ["efficientnet_lite0", "densenet121"])
def test_one_forward_pass_gives_the_prediction_and_the_map_of_two(architecture, method):
    model = classifier(architecture)
    model.ood = None
    forwards = []
    handle = model.model.register_forward_hook(lambda *_: forwards.append(1))
    prediction, cam = predict_and_map(model, IMAGE, method, size=(48, 48))
    handle.remove()
    assert len(forwards) == 1
    separate = model.predict(IMAGE)
    assert prediction.probabilities == pytest.approx(separate.probabilities, abs=1e-6)
    assert prediction.label == separate.label and prediction.positive == separate.positive
    np.testing.assert_allclose(cam, heatmap(model, IMAGE, method, size=(48, 48)), atol=1e-6)


def test_one_pass_is_only_for_gradient_methods():
    with pytest.raises(ExplainError, match="not a gradient method"):
        predict_and_map(classifier("efficientnet_lite0"), IMAGE, "eigencam")
