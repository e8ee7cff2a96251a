"""Block DCT, its inverse, and the quantized nonlinear transform layer of GCLN.

Paper: "Generative Cleaning Networks with Quantized Nonlinear Transform for Deep Neural Network
Defense", ICLR 2020 submission (section 3.2). The image is cut into M x M blocks, each block is
transformed by the 2-D DCT-II (eq. 1), every coefficient is quantized as ``Round(X/q) * q`` (eq. 2)
and the blocks are transformed back. We use the orthonormal DCT-II matrix (for M = 8 this is
exactly JPEG's ``C_i C_j / 4`` scaling), so the inverse is its transpose and coefficients have the
pixels' scale. ``q`` is given on the 0-255 pixel scale (the paper's Qs = 5 or 10) and applied to
[0,1] images by transforming ``255 * x``.

Image sizes that are not multiples of M are padded by edge replication to the next multiple (as
JPEG encoders do), transformed, and cropped back. On such sizes the layer is no longer an exact
projection of the cropped image (the padded border influences the edge blocks); on multiples of M
it is: applying it twice gives the same result as once.

Rounding has no useful gradient; :func:`ste_round` returns the exact rounded values and passes the
gradient through unchanged (straight-through estimator), which is how GCLN trains through the layer
("implemented in the same way as the pooling layers") and what the whitebox attacker differentiates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError

PIXEL_SCALE = 255.0


def dct_matrix(m: int, dtype: torch.dtype = torch.float32,
               device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal M x M DCT-II matrix ``D`` (``D @ D.T = I``); row i is frequency i."""
    n = torch.arange(m, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n.view(1, -1) + 1) * n.view(-1, 1) / (2 * m)) * math.sqrt(2 / m)
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


def _blocks(x: torch.Tensor, m: int) -> torch.Tensor:
    """N x C x H x W -> N x C x H/m x W/m x m x m (H and W multiples of m)."""
    n, c, h, w = x.shape
    if h % m or w % m:
        raise ConfigError(f"block DCT needs H and W that are multiples of M={m}, got {h}x{w}; "
                          f"pad the image first (QuantizedTransform does).")
    return x.reshape(n, c, h // m, m, w // m, m).permute(0, 1, 2, 4, 3, 5)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    n, c, bh, bw, m, _ = b.shape
    return b.permute(0, 1, 2, 4, 3, 5).reshape(n, c, bh * m, bw * m)


def block_dct(x: torch.Tensor, m: int = 8) -> torch.Tensor:
    """2-D DCT-II of every M x M block of ``x`` (N x C x H x W, H and W multiples of M).

    Returns the coefficients in the same layout: block (a, b)'s coefficient (i, j) sits at pixel
    (a*M + i, b*M + j).
    """
    d = dct_matrix(m, x.dtype, x.device)
    return _unblocks(d @ _blocks(x, m) @ d.T)


def block_idct(coef: torch.Tensor, m: int = 8) -> torch.Tensor:
    """Inverse of :func:`block_dct` (the orthonormal matrix's transpose)."""
    d = dct_matrix(m, coef.dtype, coef.device)
    return _unblocks(d.T @ _blocks(coef, m) @ d)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``torch.round(x)`` (half to even) with the identity as its gradient."""
    return _RoundSTE.apply(x)


def quantize(coef: torch.Tensor, q: float) -> torch.Tensor:
    """``Round(coef / q) * q`` (the paper's eq. 2), straight-through gradient."""
    return ste_round(coef / q) * q


class QuantizedTransform(nn.Module):
    """Block DCT -> quantize with step ``qs`` (0-255 scale) -> inverse DCT, on [0,1] images.

    Args:
        qs: quantization step on the 0-255 pixel scale (the paper's Qs; 8-12 works best there).
        block: block size M (8, as in JPEG; the paper writes M x M).

    Input N x C x H x W in [0,1]; output of the same shape (not clamped: quantization can leave
    values slightly outside [0,1]; the generator after it produces the final image).
    """

    def __init__(self, qs: float = 10.0, block: int = 8) -> None:
        super().__init__()
        if not qs > 0 or int(block) != block or block < 1:
            raise ConfigError(f"quantized transform qs={qs}, block={block}: qs must be > 0 and "
                              f"block a positive integer (e.g. qs=10 block=8).")
        self.qs, self.block = float(qs), int(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.block
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        coef = block_dct(xp * PIXEL_SCALE, m)
        out = block_idct(quantize(coef, self.qs), m) / PIXEL_SCALE
        return out[..., :h, :w]

    def extra_repr(self) -> str:
        return f"qs={self.qs:g}, block={self.block}"
