"""Networks and the clean pool of GCLN (see :mod:`bench.defenses.gcln.gcln` for the paper and
recipe).

The paper gives no architecture; these are our choices. Generator G: the quantized nonlinear
transform (QNT) first, then a residual recovery net R: conv3x3 C->w, ReLU, ``blocks`` residual
blocks (conv3x3-ReLU-conv3x3 + skip), conv3x3 w->C, zero-initialised so that an untrained G is QNT
alone; ``x_hat = clamp(t + R(t), 0, 1)`` with ``t = QNT(x)``. Default w: 32 for 1 channel, 64 for
colour. Detector D: DCGAN-style convs 4x4/2, 4x4/2, 3x3/2 (w/2, w, 2w channels, LeakyReLU 0.2,
BatchNorm after the first), global average pool, linear -> one "clean" logit. :class:`CleanPool`
is section 3.3's clean set, which grows on the fly.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.defenses.gcln._dct import QuantizedTransform


class _ResBlock(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(w, w, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """G: quantized transform, then a residual recovery net; [0,1] N x C x H x W in and out."""

    def __init__(self, channels: int, width: int, blocks: int, qs: float, block: int) -> None:
        super().__init__()
        self.qnt = QuantizedTransform(qs, block)
        self.recover = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                     *[_ResBlock(width) for _ in range(blocks)],
                                     nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(self.recover[-1].weight)  # G starts as the QNT layer alone
        nn.init.zeros_(self.recover[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.qnt(x)
        return (t + self.recover(t)).clamp(0.0, 1.0)


def detector(channels: int, width: int) -> nn.Sequential:
    """D: N x C x H x W in [0,1] (H, W >= 8) -> N logits of "clean"."""
    w = max(1, width // 2)
    return nn.Sequential(
        nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1), nn.Flatten(0))


class CleanPool:
    """The clean set Omega_o: the clean training images plus, on the fly, recovered images that
    the target classifies correctly (the newest ``capacity`` of those are kept; CPU tensors)."""

    def __init__(self, clean: torch.Tensor, capacity: int | None = None) -> None:
        self.clean = clean
        self.recovered = torch.empty((capacity or len(clean), *clean.shape[1:]), dtype=clean.dtype)
        self.added = 0

    def __len__(self) -> int:
        return len(self.clean) + min(self.added, len(self.recovered))

    def add(self, x_hat: torch.Tensor, correct: torch.Tensor) -> int:
        """Add the images of ``x_hat`` whose ``correct`` flag is set; return how many."""
        keep = x_hat.detach()[correct.to(x_hat.device)].cpu()[-len(self.recovered):]
        pos = (self.added + torch.arange(len(keep))) % len(self.recovered)
        self.recovered[pos] = keep
        self.added += len(keep)
        return len(keep)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images drawn uniformly (with replacement) from the pool."""
        idx = torch.randint(len(self), (n,), generator=generator)
        pool = torch.cat([self.clean, self.recovered[: len(self) - len(self.clean)]])
        return pool[idx]
