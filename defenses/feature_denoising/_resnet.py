"""Configurable ResNet backbone with denoising blocks (Xie et al., CVPR 2019, Sec. 6).

Residual blocks follow the authors' released code (ResNet v1.5 as in Goyal et al.): the stride of
a bottleneck is on its 3x3 conv, the last BN of every residual block starts at zero scale, convs
use He (fan-out) init and the classifier N(0, 0.01). Inputs are [0,1] images, normalised inside to
[-1,1] as in the released code.

Named backbones (``BACKBONES``): ``resnet50``/``resnet101``/``resnet152`` (the paper's ImageNet
ResNets: 7x7 stride-2 stem and 3x3 max-pool, bottleneck stages 64-128-256-512 (x4 out), depths
3-4-6-3 / 3-4-23-3 / 3-8-36-3) and ``small`` (for 28x28 and 32x32 inputs on a CPU: a 3x3 conv stem
with 16 channels and a 2x2 max-pool, one basic block per stage, widths 16-32-64-128, so res2..res5
run at 14, 7, 4, 2 px for 28x28 inputs). ``depths``/``widths`` override either.

Inserted blocks (``op``): a denoising op of :data:`._blocks.OPS`; ``bottleneck``, one
more standard residual block of the backbone's kind (the paper's "+4 bottleneck", i.e. R-164 on
R-152; a basic block on the ``small`` backbone); or ``none`` (the baseline). ``placement``:
``stage`` puts one after the last residual block of res2, res3, res4 and res5; ``every`` puts
one after every residual block, non-local ops then subsampling ``x_j`` by 2x2 max-pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor, nn

from bench.defenses.feature_denoising._blocks import NONLOCAL, OPS, DenoisingBlock
from bench.errors import ConfigError
from bench.models import Classifier

INSERTS = (*OPS, "bottleneck", "none")
PLACEMENTS = ("stage", "every")


@dataclass(frozen=True)
class Backbone:
    """A ResNet configuration: block kind, stage depths and widths, stem."""

    block: str  # "basic" or "bottleneck" (output width = 4 x stage width)
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stem: str  # "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "small" (3x3 conv + 2x2 max-pool)
    stem_width: int


BACKBONES = {
    "small": Backbone("basic", (1, 1, 1, 1), (16, 32, 64, 128), "small", 16),
    "resnet50": Backbone("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", 64),
    "resnet101": Backbone("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), "imagenet", 64),
    "resnet152": Backbone("bottleneck", (3, 8, 36, 3), (64, 128, 256, 512), "imagenet", 64),
}


def _ints(value: str | Sequence[int], what: str) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        out = ()
    if not out or min(out) < 1:
        raise ConfigError(f"{what}={value!r}: give positive integers, one per stage, e.g. 1,1,1,1.")
    return out


def backbone(name: str, depths: str | Sequence[int] | None = None,
             widths: str | Sequence[int] | None = None) -> Backbone:
    """The named backbone of :data:`BACKBONES`, with ``depths``/``widths`` overridden."""
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}: use one of {', '.join(BACKBONES)}.")
    cfg = BACKBONES[name]
    if depths is not None:
        cfg = replace(cfg, depths=_ints(depths, "depths"))
    if widths is not None:
        cfg = replace(cfg, widths=_ints(widths, "widths"))
    if len(cfg.depths) != len(cfg.widths):
        raise ConfigError(f"depths {cfg.depths} and widths {cfg.widths} need one entry per stage.")
    return cfg


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _bn(c: int, zero: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    if zero:
        nn.init.zeros_(bn.weight)
    return bn


class ResidualBlock(nn.Module):
    """A basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block, ReLU after the sum."""

    def __init__(self, kind: str, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4 if kind == "bottleneck" else width
        if kind == "bottleneck":
            self.body = nn.Sequential(_conv(cin, width, 1), _bn(width), nn.ReLU(),
                                      _conv(width, width, 3, stride), _bn(width), nn.ReLU(),
                                      _conv(width, cout, 1), _bn(cout, zero=True))
        else:
            self.body = nn.Sequential(_conv(cin, width, 3, stride), _bn(width), nn.ReLU(),
                                      _conv(width, cout, 3), _bn(cout, zero=True))
        self.shortcut = (nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class DenoisingResNet(Classifier):
    """A ResNet with blocks inserted after its stages (or after every residual block).

    Args:
        input_shape: C x H x W of the [0,1] inputs.
        num_classes: number of logits.
        config: the backbone (see :func:`backbone`).
        op: what is inserted: a denoising op, ``bottleneck`` or ``none`` (:data:`INSERTS`).
        placement: ``stage`` (after res2..res5) or ``every`` (after every residual block).
        conv1x1, residual: the denoising block's ablation switches.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, config: Backbone,
                 op: str = "nonlocal_gauss", placement: str = "stage", *, conv1x1: bool = True,
                 residual: bool = True) -> None:
        super().__init__(input_shape, num_classes)
        if op not in INSERTS or placement not in PLACEMENTS:
            raise ConfigError(f"op={op!r}, placement={placement!r}: use an op of "
                              f"{', '.join(INSERTS)} and a placement of {', '.join(PLACEMENTS)}.")
        c = config.stem_width
        stem: list[nn.Module] = (
            [_conv(input_shape[0], c, 7, 2), _bn(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
            if config.stem == "imagenet" else
            [_conv(input_shape[0], c, 3), _bn(c), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)])
        layers = stem
        for i, (depth, width) in enumerate(zip(config.depths, config.widths, strict=True)):
            for j in range(depth):
                block = ResidualBlock(config.block, c, width, 2 if i > 0 and j == 0 else 1)
                layers.append(block)
                c = block.out_channels
                if placement == "every" or j == depth - 1:
                    layers += self._insert(config, op, c, width, placement, conv1x1, residual)
        self.features = nn.Sequential(*layers)
        fc = nn.Linear(c, num_classes)
        nn.init.normal_(fc.weight, std=0.01)
        nn.init.zeros_(fc.bias)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)

    @staticmethod
    def _insert(config: Backbone, op: str, c: int, width: int, placement: str, conv1x1: bool,
                residual: bool) -> list[nn.Module]:
        if op == "none":
            return []
        if op == "bottleneck":
            return [ResidualBlock(config.block, c, width, 1)]
        subsample = placement == "every" and op in NONLOCAL
        return [DenoisingBlock(c, op, conv1x1=conv1x1, residual=residual, subsample=subsample)]
