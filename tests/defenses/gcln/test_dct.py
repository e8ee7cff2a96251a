"""Tests of the block DCT and GCLN's quantized nonlinear transform (defenses/gcln/_dct.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from bench.defenses.gcln._dct import (
    QuantizedTransform,
    block_dct,
    block_idct,
    dct_matrix,
    quantize,
    ste_round,
)
from bench.errors import ConfigError


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_qnt(x: np.ndarray, qs: float, m: int = 8) -> np.ndarray:
    """QNT computed independently: scipy's orthonormal DCT-II per block on the 0-255 scale."""
    out = np.empty_like(x)
    for a in range(0, x.shape[-2], m):
        for b in range(0, x.shape[-1], m):
            blk = x[..., a:a + m, b:b + m] * 255
            coef = scipy.fft.dctn(blk, type=2, norm="ortho", axes=(-2, -1))
            coef = np.round(coef / qs) * qs
            out[..., a:a + m, b:b + m] = scipy.fft.idctn(coef, type=2, norm="ortho",
                                                         axes=(-2, -1)) / 255
    return out


def test_dct_matrix_is_orthonormal_dct2() -> None:
    d = dct_matrix(8, torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    ref = scipy.fft.dct(np.eye(8), type=2, norm="ortho", axis=0)
    assert np.allclose(d.numpy(), ref, atol=1e-12)


def test_block_dct_matches_scipy_per_block_and_inverts_exactly() -> None:
    x = _images((2, 3, 16, 24))
    coef = block_dct(x, 8)
    ref = scipy.fft.dctn(x[0, 1, 8:16, 16:24].numpy(), type=2, norm="ortho")
    assert np.allclose(coef[0, 1, 8:16, 16:24].numpy(), ref, atol=1e-10)
    assert torch.allclose(block_idct(coef, 8), x, atol=1e-12)  # exact inverse (float tolerance)


def test_block_dct_requires_multiples_of_m() -> None:
    with pytest.raises(ConfigError, match="multiples of M=8"):
        block_dct(torch.rand(1, 1, 28, 28), 8)


@pytest.mark.parametrize("size", [32, 28])  # 28 is padded by edge replication and cropped back
def test_tiny_step_is_the_identity(size: int) -> None:
    x = _images((2, 1, size, size)).float()
    assert torch.allclose(QuantizedTransform(qs=1e-4)(x), x, atol=1e-5)
    assert not torch.allclose(QuantizedTransform(qs=10)(x), x, atol=1e-3)


@pytest.mark.parametrize("qs", [5.0, 10.0, 37.3])
def test_layer_is_a_projection_on_multiples_of_m(qs: float) -> None:
    layer = QuantizedTransform(qs=qs)
    x = _images((2, 3, 32, 32))
    once = layer(x)
    assert torch.allclose(layer(once), once, atol=1e-9)  # idempotent
    k = block_dct(once * 255) / qs  # every coefficient is a multiple of qs on the 0-255 scale
    assert torch.allclose(k, k.round(), atol=1e-6)


@pytest.mark.parametrize("qs", [5.0, 10.0, 300.0])
def test_layer_matches_an_independent_reference(qs: float) -> None:
    x = _images((1, 2, 16, 16))
    ref = _reference_qnt(x.numpy(), qs)
    assert np.allclose(QuantizedTransform(qs=qs)(x).numpy(), ref, atol=1e-9)


def test_large_steps_zero_every_coefficient_below_half_the_step() -> None:
    x = _images((1, 1, 16, 16))
    coef = block_dct(x * 255)
    qs = 300.0
    out_coef = block_dct(QuantizedTransform(qs=qs)(x) * 255)
    small = coef.abs() < qs / 2
    assert small.any() and (~small).any()  # the DC terms (up to 8*255) survive, AC terms do not
    assert torch.allclose(out_coef[small], torch.zeros_like(out_coef[small]), atol=1e-9)
    assert torch.equal(small, out_coef.abs() < 1e-6)
    # beyond twice the largest coefficient (2 * 8 * 255) every block becomes 0
    assert torch.allclose(QuantizedTransform(qs=4081)(x), torch.zeros_like(x), atol=1e-12)


def test_step_is_on_the_0_255_scale() -> None:
    v = 0.51  # a constant 8x8 block: DC = 8 * 255 * v = 1040.4 -> 1040 with qs=10
    out = QuantizedTransform(qs=10)(torch.full((1, 1, 8, 8), v, dtype=torch.float64))
    assert torch.allclose(out, torch.full_like(out, 1040 / 2040), atol=1e-12)


def test_straight_through_gradient_is_the_identity() -> None:
    x = (torch.randn(4, 5) * 3).requires_grad_(True)
    w = torch.randn(4, 5)
    (ste_round(x) * w).sum().backward()
    assert torch.equal(x.grad, w)
    assert torch.equal(quantize(torch.tensor([12.4, -7.6]), 5.0), torch.tensor([10.0, -10.0]))


@pytest.mark.parametrize("size", [32, 28])
def test_layer_gradient_is_the_identity(size: int) -> None:
    x = _images((2, 1, size, size)).requires_grad_(True)
    w = _images((2, 1, size, size), seed=1)
    (QuantizedTransform(qs=10)(x) * w).sum().backward()
    assert torch.allclose(x.grad, w, atol=1e-9)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="qs must be > 0"):
        QuantizedTransform(qs=0)
    with pytest.raises(ConfigError, match="block a positive integer"):
        QuantizedTransform(block=0)
