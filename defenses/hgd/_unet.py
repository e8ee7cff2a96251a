"""The denoising network of the HGD family (Liao et al., CVPR 2018, section 3.1 and Figure 3).

``C`` is a 3x3 convolution + batch norm + ReLU and ``Ck`` is ``k`` consecutive ``C``. The
feedforward path is five blocks (one C2, then four C3 whose first convolution has stride 2); the
feedback path is four blocks that each upsample (bilinearly) the feedback input to the size of the
matching feedforward output (the lateral input), concatenate the two and apply a Ck (three C3, then
one C2); a final 1x1 convolution predicts the negative noise ``-dx^``. Without the lateral
connections (``lateral=False``) the same network is the paper's DAE: each feedback block then sees
the upsampled feedback input only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_FORWARD = (64, 128, 256, 256, 256)  # Figure 3, for 299x299 ImageNet inputs
PAPER_FEEDBACK = (256, 256, 128, 64)
PAPER_SIZE = 299


def width_multiplier(size: int) -> float:
    """The power of two nearest to ``size / 299``, capped at 1 (28 or 32 px -> 1/8, 64 px -> 1/4,
    128 px -> 1/2, 224 or 299 px -> 1)."""
    ratio = max(size, 1) / PAPER_SIZE
    return float(min(1.0, 2.0 ** round(torch.log2(torch.tensor(ratio)).item())))


def default_widths(size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The paper's widths times :func:`width_multiplier` of ``size`` (at least 4 channels)."""
    m = width_multiplier(size)
    return (tuple(max(4, round(w * m)) for w in PAPER_FORWARD),
            tuple(max(4, round(w * m)) for w in PAPER_FEEDBACK))


class ConvBNReLU(nn.Module):
    """``C``: 3x3 convolution, batch norm, ReLU. In eval mode the batch norm is folded into the
    convolution (the same function, ~1.4x faster for attacks that differentiate through it)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.bn.track_running_stats:
            return F.relu(self.bn(self.conv(x)))
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        bias = self.bn.bias - self.bn.running_mean * scale
        return F.relu(F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding))


def conv_stack(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """``Ck``: ``k`` consecutive ``C``; the first convolution has ``stride``."""
    return nn.Sequential(*[ConvBNReLU(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                           for i in range(k)])


class DenoisingUNet(nn.Module):
    """DUNET (``lateral=True``) or DAE (``lateral=False``); returns the predicted ``-dx^``.

    Args:
        channels: image channels.
        forward_widths: output channels of the five feedforward blocks.
        feedback_widths: output channels of the four feedback blocks, top to bottom.
        lateral: concatenate the feedforward outputs into the feedback blocks (U-net).
    """

    def __init__(self, channels: int, forward_widths: Sequence[int],
                 feedback_widths: Sequence[int], lateral: bool = True) -> None:
        super().__init__()
        fw, bw = tuple(forward_widths), tuple(feedback_widths)
        if len(fw) != 5 or len(bw) != 4 or min(fw + bw) < 1:
            raise ValueError(f"widths must be 5 feedforward and 4 feedback positive ints, got "
                             f"{fw} and {bw}")
        self.lateral = lateral
        self.encoder = nn.ModuleList([conv_stack(channels, fw[0], 2)])
        for cin, cout in zip(fw[:-1], fw[1:], strict=True):
            self.encoder.append(conv_stack(cin, cout, 3, stride=2))
        self.decoder = nn.ModuleList()
        below = fw[-1]
        for cout, lat, k in zip(bw, reversed(fw[:-1]), (3, 3, 3, 2), strict=True):
            self.decoder.append(conv_stack(below + (lat if lateral else 0), cout, k))
            below = cout
        self.to_noise = nn.Conv2d(below, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted negative noise (same shape as ``x``, N x C x H x W, unbounded)."""
        skips = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        for block, lat in zip(self.decoder, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, lat], 1) if self.lateral else h)
        return self.to_noise(h)
