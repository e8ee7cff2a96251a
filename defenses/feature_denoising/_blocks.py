"""Denoising operations and the denoising block of Xie et al., CVPR 2019 (Sec. 4, Figs. 4-5).

Block: ``y = x + BN(Conv1x1(op(x)))``. The BatchNorm after the 1x1 conv, with its scale
initialised to zero (so every block starts as the identity), is the authors' released code
(facebookresearch/ImageNet-Adversarial-Training, ``resnet_model.denoising``); the paper's figure
draws only the 1x1 conv. Ablations (Table 1): ``conv1x1=False`` gives ``y = x + op(x)`` (the conv
and its BN removed); ``residual=False`` gives ``y = BN(Conv1x1(op(x)))`` with the BN scale
initialised to one (a zero scale would make the block output 0).

Operations, on features N x C x H x W:

* ``nonlocal_gauss``: ``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j) / sqrt(d)) x_j`` over all
  positions; theta, phi are 1x1 convs to ``d = C/2`` channels (N(0, 0.01) init, as released).
* ``nonlocal_dot``: ``y_i = (1/N) sum_j (x_i^T x_j) x_j``, no embedding, N = positions summed.
* ``bilateral_gauss`` / ``bilateral_dot``: the same two weightings restricted to the 3x3
  neighbourhood (Eqn. 2); positions outside the map are excluded (masked from the softmax; the dot
  version divides by the number of in-map neighbours, the local analogue of N).
* ``mean``: 3x3 mean filter, stride 1, over the in-map neighbours.
* ``median``: 3x3 median filter per channel over the in-map neighbours (torch's lower median for
  the even counts at borders and corners).
* ``null``: the identity (the block reduces to the 1x1 conv and the residual).

``subsample=True`` (non-local ops only) max-pools the ``x_j`` maps (phi and the averaged x) 2x2,
the trick the paper uses when a block follows every residual block; ``x_i`` stays full size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError

NONLOCAL = ("nonlocal_gauss", "nonlocal_dot")
BILATERAL = ("bilateral_gauss", "bilateral_dot")
OPS = (*NONLOCAL, *BILATERAL, "mean", "median", "null")


def _embedding(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1, bias=False)
    nn.init.normal_(conv.weight, std=0.01)
    return conv


class NonLocalMeans(nn.Module):
    """Non-local means (Eqn. 1): Gaussian (embedded, softmax) or dot product (no embedding, /N).

    Args:
        channels: C of the input features.
        softmax: the Gaussian version (True) or the dot-product version (False).
        subsample: max-pool the ``x_j`` maps 2x2 (``x_i`` keeps its size).
    """

    def __init__(self, channels: int, softmax: bool = True, subsample: bool = False) -> None:
        super().__init__()
        self.softmax, self.subsample = softmax, subsample
        if softmax:
            d = max(1, channels // 2)
            self.theta, self.phi = _embedding(channels, d), _embedding(channels, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised features, same shape as ``x`` (N x C x H x W)."""
        n, c, h, w = x.shape
        theta, phi, g = (self.theta(x), self.phi(x), x) if self.softmax else (x, x, x)
        if self.subsample:
            phi = F.max_pool2d(phi, 2, ceil_mode=True)
            g = F.max_pool2d(g, 2, ceil_mode=True)
        theta, phi, g = theta.flatten(2), phi.flatten(2), g.flatten(2)  # N x d|C x positions
        if self.softmax:
            attn = torch.softmax(theta.transpose(1, 2) @ phi / math.sqrt(theta.shape[1]), dim=-1)
            out = g @ attn.transpose(1, 2)  # y_i = sum_j attn_ij x_j
        elif c < phi.shape[2]:  # the same sum, cheaper as (sum_j x_j x_j^T) x_i when C < N
            out = (g @ phi.transpose(1, 2)) @ theta / phi.shape[2]
        else:
            out = g @ (phi.transpose(1, 2) @ theta) / phi.shape[2]
        return out.view(n, c, h, w)


def _neighbours(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """3x3 neighbourhoods: N x C x H x W -> N x C x H x W x 9, outside positions set to ``fill``."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=fill)
    return padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(n, c, h, w, 9)


class Bilateral(nn.Module):
    """Bilateral filter (Eqn. 2): non-local weights restricted to the 3x3 neighbourhood.

    Args:
        channels: C of the input features.
        softmax: Gaussian weights (embedded, softmax) or dot-product weights (/ neighbours).
    """

    def __init__(self, channels: int, softmax: bool = True) -> None:
        super().__init__()
        self.softmax = softmax
        if softmax:
            d = max(1, channels // 2)
            self.theta, self.phi = _embedding(channels, d), _embedding(channels, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised features, same shape as ``x`` (N x C x H x W)."""
        around = _neighbours(x)  # x_j for every i: N x C x H x W x 9
        theta, phi = (self.theta(x), _neighbours(self.phi(x))) if self.softmax else (x, around)
        inside = _neighbours(torch.ones_like(x[:1, :1])) > 0  # 1 x 1 x H x W x 9
        logits = (theta.unsqueeze(-1) * phi).sum(1, keepdim=True)
        if self.softmax:
            logits = logits / math.sqrt(theta.shape[1])
            weights = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1)
        else:
            weights = logits / inside.sum(-1, keepdim=True)
        return (weights * around).sum(-1)


class MeanFilter(nn.Module):
    """3x3 mean filter, stride 1 (average pooling over the in-map neighbours)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class MedianFilter(nn.Module):
    """3x3 median filter, per channel, over the in-map neighbours (Eqn. 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _neighbours(x, float("nan")).nanmedian(-1).values


def make_op(op: str, channels: int, subsample: bool = False) -> nn.Module:
    """The denoising operation ``op`` (one of :data:`OPS`) for ``channels`` features."""
    if op in NONLOCAL:
        return NonLocalMeans(channels, softmax=op == "nonlocal_gauss", subsample=subsample)
    if op in BILATERAL:
        return Bilateral(channels, softmax=op == "bilateral_gauss")
    if op == "mean":
        return MeanFilter()
    if op == "median":
        return MedianFilter()
    if op == "null":
        return nn.Identity()
    raise ConfigError(f"Unknown denoising op {op!r}: use one of {', '.join(OPS)}.")


class DenoisingBlock(nn.Module):
    """``y = x + BN(Conv1x1(op(x)))`` (Fig. 4), with the Table-1 ablation switches.

    Args:
        channels: C of the features (kept).
        op: the denoising operation, one of :data:`OPS`.
        conv1x1: keep the 1x1 conv (+BN); False is the "removing 1x1" ablation.
        residual: keep the identity skip; False is the "removing residual" ablation.
        subsample: 2x2 max-pool of the ``x_j`` maps in non-local ops.
    """

    def __init__(self, channels: int, op: str = "nonlocal_gauss", *, conv1x1: bool = True,
                 residual: bool = True, subsample: bool = False) -> None:
        super().__init__()
        if op == "null" and not conv1x1:
            raise ConfigError("A null denoising block without its 1x1 conv is y = 2x: keep "
                              "conv1x1=true or choose another op.")
        self.op_name, self.residual = op, residual
        self.op = make_op(op, channels, subsample)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False) if conv1x1 else None
        self.bn = nn.BatchNorm2d(channels) if conv1x1 else None
        if self.bn is not None and residual:
            nn.init.zeros_(self.bn.weight)  # every block starts as the identity (released code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output, same shape as ``x`` (N x C x H x W)."""
        f = self.op(x)
        if self.conv is not None:
            f = self.bn(self.conv(f))
        return x + f if self.residual else f
