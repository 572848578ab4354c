"""EfficientNet-Lite written out in plain PyTorch, with timm's `tf_efficientnet_lite{0,1}` parameter names.

The shipped classifiers are EfficientNet-Lite0. Building them through timm imports torchvision and, through
`torchvision.ops`, `torch._dynamo`: over a second of every process's start (`scripts/predict.py`, the app's first
upload) for a network of about forty layers. This module builds the same network (same layers, same TF "same"
padding, same names, so timm's and the wheels' state dicts load unchanged); `tests/test_architectures.py` holds
its outputs equal to timm's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, as in the original weights
# Per variant, per stage: (repeats, kernel, stride, expansion, output channels). Stage 0 is a depthwise-separable
# block, the others inverted residuals; Lite1 repeats the middle stages more (depth multiplier 1.1).
STAGES = {
    0: ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
        (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    1: ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80), (4, 5, 1, 6, 112),
        (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
}
STEM, HEAD = 32, 1280


class Conv2dSame(nn.Conv2d):
    """A strided convolution with TensorFlow's "same" padding: the extra pixel, if any, goes bottom and right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                                        strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class BatchNormAct2d(nn.BatchNorm2d):
    """Batch norm followed by ReLU6 (or nothing), one module as in timm, so the parameter names match."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Stride 1: symmetric padding (TF "same" for odd kernels); stride 2: `Conv2dSame`."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_channels, out_channels, kernel, stride, groups=groups, bias=False)


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_dw = conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = BatchNormAct2d(in_channels)
        self.conv_pw = conv(in_channels, out_channels, 1)
        self.bn2 = BatchNormAct2d(out_channels, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        middle = in_channels * expansion
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_pw = conv(in_channels, middle, 1)
        self.bn1 = BatchNormAct2d(middle)
        self.conv_dw = conv(middle, middle, kernel, stride, groups=middle)
        self.bn2 = BatchNormAct2d(middle)
        self.conv_pwl = conv(middle, out_channels, 1)
        self.bn3 = BatchNormAct2d(out_channels, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return y + x if self.has_skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite`variant` with a `num_classes` head; dropout `drop_rate` before it while training."""

    def __init__(self, variant: int = 0, num_classes: int = 1000, drop_rate: float = 0.2):
        super().__init__()
        self.drop_rate = drop_rate
        self.conv_stem = conv(3, STEM, 3, 2)
        self.bn1 = BatchNormAct2d(STEM)
        stages, channels = [], STEM
        for repeats, kernel, stride, expansion, out_channels in STAGES[variant]:
            blocks = []
            for index in range(repeats):
                step = stride if index == 0 else 1
                blocks.append(DepthwiseSeparableConv(channels, out_channels, kernel, step) if expansion == 1
                              else InvertedResidual(channels, out_channels, kernel, step, expansion))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = conv(channels, HEAD, 1)
        self.bn2 = BatchNormAct2d(HEAD)
        self.classifier = nn.Linear(HEAD, num_classes)
        for module in self.modules():
            _init_weights(module)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head for `num_classes` (transfer learning from the ImageNet head)."""
        self.classifier = nn.Linear(HEAD, num_classes)
        _init_weights(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        pooled = features.mean((2, 3))
        return self.classifier(F.dropout(pooled, self.drop_rate, self.training))


def _init_weights(module: nn.Module) -> None:
    """The initialisation of the EfficientNet paper's code (timm's `_init_weight_goog`), for training from scratch."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        limit = 1.0 / math.sqrt(module.weight.size(0))
        nn.init.uniform_(module.weight, -limit, limit)
        nn.init.zeros_(module.bias)
