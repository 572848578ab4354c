"""A long session does not accumulate: every CAM call releases its hooks, and repeated analyses keep no objects.

The Analyze page runs every upload through one shared network per model (`covid_models.analysis.image_analysis.analyse`:
predict, heatmap, masks, share inside, at display size; then the overlays). A heatmap registers a forward
hook on that network; a hook left behind would keep capturing every later forward pass's activations, so
memory would grow with each image. These tests run that same analysis 40 times on small untrained models and
check the mechanism (no hook left on any module, no tensor more after 40 analyses than after the warm-up, no
gradient stored on the shared weights) and, as a backstop, resident memory. scripts/benchmark_memory.py
measures the same analysis with the shipped models.
"""
from __future__ import annotations

import gc
import subprocess
import sys

import pytest
import torch
from model_fixtures import write_tiny_classifier

from covid_models.analysis.explain import heatmap
from covid_models.analysis.image_analysis import Analysis, analyse
from covid_models.analysis.overlays import heatmap_overlay, mask_overlay
from covid_models.benchmarking import chest_like_png, hooks_left, rss_mb
from covid_models.imaging.io import read_image
from covid_models.models.inference import Classifier
from covid_models.models.model_card import ModelCard
from covid_models.models.segmentation import (
    POSTPROCESS_LUNGS,
    Segmenter,
    build_segmentation_model,
    segmentation_preprocessing,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

WARMUP = 10
ANALYSES = 40
# Resident memory is read after returning freed heap to the system (glibc's malloc_trim), so that it counts
# what is still held. Measured here: clean runs of the 30 analyses stay within 0.1 MB of the warm-up level
# (within 4 MB untrimmed); a run that keeps each analysis's outputs (image, heatmap, mask, two overlays, about
# 3 MB at these image sizes) grows by 88 MB. 10 MB catches any leak of an image-sized buffer per analysis
# (over 0.33 MB each) with a wide margin over the noise. A hook kept alive retains only small tensors at a
# 64-pixel input: the hook and tensor counts catch it, not RSS.
RSS_BOUND_MB = 10.0


def live_objects() -> dict[str, int]:
    """Tensors reachable in the process after a full collection."""
    gc.collect()
    # type(), not isinstance: that reads __class__, which some lazy modules answer with a warning
    return {"tensors": sum(issubclass(type(obj), torch.Tensor) for obj in gc.get_objects())}


IMAGES = [chest_like_png(size=(384, 448, 512)[seed % 3], seed=seed) for seed in range(6)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Classifier, Segmenter]:
    root = tmp_path_factory.mktemp("memory")
    torch.manual_seed(0)
    classifier = Classifier.load(write_tiny_classifier(root / "classifier"))
    card = ModelCard(name="lungs", task="segmentation", modality="xray", architecture="unet", classes=["lungs"],
                     preprocessing=segmentation_preprocessing(64),
                     operating_points={"default": {"threshold": 0.5, "rule": "test fixture"}},
                     default_operating_point="default", extra={"postprocess": POSTPROCESS_LUNGS})
    return classifier, Segmenter(build_segmentation_model("unet", pretrained=False), card)


def analyse_upload(classifier: Classifier, segmenter: Segmenter, data: bytes) -> Analysis:
    """One upload as the Analyze page computes it: read, the analysis seam, and the overlays the page draws."""
    result = analyse(read_image(data, name="chest.png"), [classifier], [segmenter])
    mask = result.masks["lungs"]
    overlay = mask_overlay(heatmap_overlay(result.grey, result.heat, 0.45), mask, color=(255, 255, 255), alpha=0.0)
    shown = mask_overlay(result.grey, mask)
    assert overlay.shape == shown.shape == (*result.image.shape, 3)
    return result


def test_every_heatmap_method_releases_its_hooks_and_stores_no_gradient(models):
    classifier, _ = models
    pixels = read_image(IMAGES[0]).pixels
    for method in ("gradcam", "gradcam++", "eigencam", "hirescam", "xgradcam", "layercam", "ablationcam"):
        heatmap(classifier, pixels, method)
        assert hooks_left(classifier.model) == (0, 0), method
        assert all(p.grad is None and not p.requires_grad for p in classifier.model.parameters()), method


def test_the_hook_count_sees_a_hook_that_is_not_released(models):
    """The check above can fail: a hook left on the shared network is counted until it is removed."""
    classifier, _ = models
    handle = classifier.cam_layer.register_forward_hook(lambda *_: None)
    try:
        assert hooks_left(classifier.model)[0] == 1
    finally:
        handle.remove()
    assert hooks_left(classifier.model) == (0, 0)


@pytest.mark.slow
def test_forty_analyses_leave_no_hook_no_extra_object_and_no_memory_growth(models):
    classifier, segmenter = models
    for index in range(WARMUP):
        analyse_upload(classifier, segmenter, IMAGES[index % len(IMAGES)])
    objects, rss = live_objects(), rss_mb()
    for index in range(WARMUP, ANALYSES):
        analyse_upload(classifier, segmenter, IMAGES[index % len(IMAGES)])
        assert hooks_left(classifier.model) == (0, 0)
        assert hooks_left(segmenter.model) == (0, 0)
    assert live_objects() == objects
    assert rss_mb() - rss < RSS_BOUND_MB


@pytest.mark.slow
def test_the_dashboards_library_modules_load_no_heavy_optional_package():
    """The app's share of its 1 GB: what the pages import from the library leaves scikit-learn, matplotlib,
    OpenCV and pytorch-grad-cam (test and script tools) unloaded."""
    code = ("import sys\n"
            "import covid_models.analysis.explain, covid_models.analysis.figures, covid_models.models.inference\n"
            "import covid_models.imaging.io, covid_models.training.manifests, covid_models.analysis.overlays\n"
            "import covid_models.training.data_folders, covid_models.training.splits, covid_models.training.datasets\n"
            "import covid_models.analysis.report, covid_models.reviews.store, covid_models.models.segmentation\n"
            "import covid_models.models.checkpoint, covid_models.metrics, covid_models.analysis.image_analysis\n"
            "heavy = {'sklearn', 'matplotlib', 'cv2', 'pytorch_grad_cam'}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"
