"""The backbone registry: every entry builds, names a CAM layer, and EfficientNet-Lite0 has real ImageNet weights."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image

from covid_models.models.architectures import (
    REGISTRY,
    PretrainedWeightsUnavailable,
    build_model,
    cam_target_layer,
    get_architecture,
)

REQUIRED = ["vgg16", "vgg19", "resnet50", "densenet121", "densenet201", "efficientnet_b0", "mobilenet_v2",
            "mobilenet_v3_large", "xception", "inception_v3", "efficientnet_lite0"]


def test_registry_holds_every_required_architecture():
    assert set(REQUIRED) <= set(REGISTRY)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "densenet121", "mobilenet_v3_large",
                                  "inception_v3", "xception", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_architecture_builds_with_the_requested_classes_and_a_spatial_cam_layer(name):
    model = build_model(name, num_classes=3).eval()
    size = get_architecture(name).default_size
    captured = {}
    layer = cam_target_layer(model, name)
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.update(shape=out.shape))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    handle.remove()
    assert logits.shape == (1, 3)
    assert len(captured["shape"]) == 4 and captured["shape"][-1] > 1  # a feature map, not a vector


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        build_model("alexnet9000", 2)


def _imagenet_top5(model, image_name: str) -> list[str]:
    from timm.data import ImageNetInfo

    image = torch.tensor(load_sample_image(image_name)).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    arch = get_architecture("efficientnet_lite0")
    mean, std = torch.tensor(arch.mean).view(3, 1, 1), torch.tensor(arch.std).view(3, 1, 1)
    with torch.no_grad():
        top = model((image - mean) / std).softmax(1)[0].topk(5).indices.tolist()
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in top]


@pytest.mark.parametrize("variant", [0, 1])
def test_efficientnet_lite_loads_real_imagenet_weights_offline(variant):
    """A real ImageNet model recognises scikit-learn's bundled photos; a random init does not."""
    model = build_model(f"efficientnet_lite{variant}", num_classes=1000, pretrained="imagenet").eval()
    from covid_models.models.architectures import efficientnet_lite_imagenet_state_dict

    model.load_state_dict(efficientnet_lite_imagenet_state_dict(variant))  # keep the ImageNet head for this check
    flower = " ".join(_imagenet_top5(model, "flower.jpg"))
    china = " ".join(_imagenet_top5(model, "china.jpg"))
    assert "daisy" in flower
    assert any(word in china for word in ("palace", "bell cote", "dome", "monastery", "pagoda", "church", "boathouse"))
    random_model = build_model("efficientnet_lite0", num_classes=1000).eval()
    assert "daisy" not in " ".join(_imagenet_top5(random_model, "flower.jpg"))


def test_pretrained_backbone_differs_from_random_init_except_the_new_head():
    pretrained = build_model("efficientnet_lite0", 2, pretrained="imagenet").state_dict()
    random = build_model("efficientnet_lite0", 2).state_dict()
    assert not torch.equal(pretrained["conv_stem.weight"], random["conv_stem.weight"])
    assert pretrained["classifier.weight"].shape == (2, 1280)


def test_online_weights_fail_fast_with_a_clear_message_when_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # nothing cached
    monkeypatch.setattr("covid_models.models.architectures._host_reachable", lambda host, timeout=3.0: False)
    started = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable, match="offline"):
        build_model("resnet50", 2, pretrained="imagenet")
    assert time.monotonic() - started < 10


def test_timm_weights_offline_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsUnavailable, match="efficientnet_lite0"):
        build_model("xception", 2, pretrained="imagenet")


def test_pretrained_must_be_imagenet_or_none():
    with pytest.raises(ValueError):
        build_model("resnet18", 2, pretrained="chexpert")
    assert np.isfinite(build_model("resnet18", 2, pretrained=None)(torch.zeros(1, 3, 64, 64)).detach().numpy()).all()


@pytest.mark.parametrize("variant", [0, 1])
def test_the_plain_efficientnet_lite_is_timms_network_name_for_name_and_output_for_output(variant):
    """timm's tf_efficientnet_lite is the reference; ours loads its state dict and gives the same outputs (odd
    input sizes exercise the asymmetric TF "same" padding of the strided convolutions)."""
    import timm

    from covid_models.models.efficientnet_lite import EfficientNetLite

    torch.manual_seed(variant)
    reference = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    ours = EfficientNetLite(variant, num_classes=3).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    for size in (64, 131):
        inputs = torch.randn(2, 3, size, size)
        with torch.inference_mode():
            assert torch.equal(ours(inputs), reference(inputs)), size


@pytest.mark.slow
def test_loading_a_shipped_classifier_imports_neither_timm_nor_torchvision():
    """Both pull in torch's compiler stack (over a second of every process's start) for nothing at inference."""
    import subprocess
    import sys

    from conftest import WEIGHTS_DIR

    code = ("import sys; from covid_models.models.inference import Classifier; "
            f"Classifier.load({str(WEIGHTS_DIR / 'xray-efficientnet-lite0')!r}); "
            "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"
