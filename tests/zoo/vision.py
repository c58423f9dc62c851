"""Vision models of the test zoo: CIFAR ResNet-56, VGG-16-BN, a MobileNetV2-style net, a
squeeze-excitation net and a coverage net (grouped conv, transposed conv, GroupNorm,
InstanceNorm).

ResNet-56 and VGG-16 are defined once, in :mod:`prunec.zoo`; the others are test-only.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunec.zoo import resnet56, vgg16
from tests.zoo import ZooCase

__all__ = ["VISION", "MobileNetV2Mini", "InvertedResidual", "SENet", "CoverageNet"]


def _image(batch: int = 2, channels: int = 3, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.randn(batch, channels, size, size, generator=gen)


def _case(name: str, build: Callable[[], nn.Module], *args: torch.Tensor) -> ZooCase:
    torch.manual_seed(0)
    model = build().eval()
    _randomize_norm_stats(model)
    return ZooCase(name, model, args or (_image(),))


def _randomize_norm_stats(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so a folding bug cannot hide behind 0/1."""
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.track_running_stats:
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
        if isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and mod.affine:
            with torch.no_grad():
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)


# --------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project, residual when shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Mini(nn.Module):
    """A small MobileNetV2: stem, inverted residual stages ``(expand, out, repeats, stride)``,
    a 1x1 head conv, global pooling and a linear classifier."""

    STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU6(inplace=True)]
        channels = 16
        for expand, out, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers += [nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128),
                   nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


# --------------------------------------------------------------------------- SE
class SEBlock(nn.Module):
    """Squeeze-excitation: pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class SENet(nn.Module):
    """Conv stem, a residual block with SE, a strided conv, pooling and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.se = SEBlock(32)
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.se(self.conv(x)))
        x = self.down(x)
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- coverage
class CoverageNet(nn.Module):
    """Grouped conv (groups=4), transposed conv, GroupNorm and InstanceNorm in one encoder-
    decoder; returns a per-pixel map (no classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 32)
        self.grouped = nn.Conv2d(32, 64, 3, stride=2, padding=1, groups=4)
        self.inorm = nn.InstanceNorm2d(64, affine=True)
        self.up = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.gn2 = nn.GroupNorm(8, 32)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn1(self.stem(x)))
        skip = x
        x = F.relu(self.inorm(self.grouped(x)))
        x = F.relu(self.gn2(self.up(x)) + skip)
        return self.head(x)


# --------------------------------------------------------------------------- registry
def resnet56_case() -> ZooCase:
    """CIFAR ResNet-56 (3 x 9 basic blocks, widths 16/32/64) at 2x3x32x32."""
    return _case("resnet56", resnet56)


def vgg16_bn_case() -> ZooCase:
    """VGG-16-BN for 32x32 at a quarter of the widths (16 ... 128) at 2x3x32x32."""
    return _case("vgg16_bn", lambda: vgg16(width_mult=0.25))


def mobilenetv2_case() -> ZooCase:
    """A small MobileNetV2 (inverted residuals, depthwise convs) at 2x3x32x32."""
    return _case("mobilenetv2", MobileNetV2Mini)


def se_net_case() -> ZooCase:
    """A squeeze-excitation residual net at 2x3x32x32."""
    return _case("se_net", SENet)


def coverage_net_case() -> ZooCase:
    """Grouped conv + conv_transpose2d + GroupNorm + InstanceNorm at 2x3x16x16."""
    return _case("coverage_net", CoverageNet, _image(size=16))


VISION: dict[str, Callable[[], ZooCase]] = {
    "resnet56": resnet56_case,
    "vgg16_bn": vgg16_bn_case,
    "mobilenetv2": mobilenetv2_case,
    "se_net": se_net_case,
    "coverage_net": coverage_net_case,
}
