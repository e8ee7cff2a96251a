"""Classifier architectures: the base class every classifier follows, and the built-in networks.

Inputs are always [0,1] images; normalization lives inside the model. Every classifier follows
timm's convention: ``forward_features(x)`` returns the topmost convolutional feature maps (before
global pooling; what FGD-style losses compare) and ``forward_head(features)`` the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import register_model


class Classifier(nn.Module):
    """Base: [0,1] images in, logits out, normalization inside.

    Args:
        input_shape: C x H x W of the inputs.
        num_classes: number of logits.
        mean, std: per-channel normalization applied first (defaults 0.5 / 0.5).
    """

    recipe: ClassVar[dict[str, Any]] = {"epochs": 5, "lr": 1e-3, "batch_size": 128}
    pretrained: bool = False

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        c = input_shape[0]
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean or [0.5] * c).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std or [0.5] * c).view(1, c, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Topmost convolutional feature maps for [0,1] images ``x``."""
        return self.features(self.normalize(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N x num_classes) for images ``x`` (N x C x H x W in [0,1])."""
        return self.forward_head(self.forward_features(x))


def _flat_size(module: nn.Module, shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *shape)).numel())


@register_model("cnn")
class PaperCNN(Classifier):
    """The small CNN of the perceptual-loss AE paper: conv5x5 1->20, pool, conv5x5 20->50, pool,
    fc 800->500, fc 500->10 (99.5% on MNIST in the paper)."""

    recipe = {"epochs": 4, "lr": 1e-3, "batch_size": 128}

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes)
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = _flat_size(self.features, input_shape)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(),
                                  nn.Linear(500, num_classes))


@register_model("cnn3x3")
class CNN3x3(Classifier):
    """A different 28x28 architecture (the second model of HGD-style training sets): conv3x3 16,
    conv3x3 32, pool, conv3x3 32, pool, fc 128, fc 10."""

    recipe = {"epochs": 4, "lr": 1e-3, "batch_size": 128}

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes)
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = _flat_size(self.features, input_shape)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet18")
class CifarResNet18(Classifier):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool, stages 64-128-256-512) for 32x32 inputs."""

    recipe = {"epochs": 30, "lr": 1e-3, "batch_size": 128}

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 width: int = 64) -> None:
        super().__init__(input_shape, num_classes, [0.4914, 0.4822, 0.4465][: input_shape[0]],
                         [0.2471, 0.2435, 0.2616][: input_shape[0]])
        w = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], w[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(w[0]), nn.ReLU()]
        cin = w[0]
        for i, cout in enumerate(w):
            for j in range(2):
                layers.append(_BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))


@register_model("vgg11")
class CifarVGG11(Classifier):
    """CIFAR-style VGG-11 with batch norm (the second 32x32 architecture)."""

    recipe = {"epochs": 30, "lr": 1e-3, "batch_size": 128}
    cfg = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes, [0.4914, 0.4822, 0.4465][: input_shape[0]],
                         [0.2471, 0.2435, 0.2616][: input_shape[0]])
        layers: list[nn.Module] = []
        cin = input_shape[0]
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))
