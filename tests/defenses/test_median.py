"""Median smoothing: equal to scipy's median_filter (Xu et al.'s reference) incl. borders and
even kernels, the paper's defaults, BPDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter as scipy_median

from bench.errors import ConfigError
from bench.registry import DEFENSES


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, 12])
def test_equals_scipy_reflect_median_filter(kernel: int) -> None:
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(kernel))
    out = DEFENSES.build("median", input_shape=(3, 9, 11), kernel=kernel)(x)
    ref = scipy_median(x.numpy(), size=(1, 1, kernel, kernel), mode="reflect")
    assert out.shape == x.shape
    assert np.array_equal(out.numpy(), ref)


def test_even_kernel_alignment_and_upper_median_by_hand() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = DEFENSES.build("median", input_shape=(1, 4, 4), kernel=2)(x)[0, 0]
    # window of (i, j) is rows i-1..i, cols j-1..j with the edge row/col repeated; the upper of
    # the two middle values: (1,1) -> {0, 1, 4, 5} -> 4; (0,0) -> {0, 0, 0, 0} -> 0
    want = torch.tensor([[0.0, 1, 2, 3], [4, 4, 5, 6], [8, 8, 9, 10], [12, 12, 13, 14]])
    assert torch.equal(out, want)


def test_removes_salt_noise_and_keeps_range() -> None:
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1.0
    out = DEFENSES.build("median", kernel=3)(x)
    assert out.abs().max() == 0
    y = torch.rand(4, 1, 28, 28)
    out = DEFENSES.build("median")(y)
    assert out.min() >= y.min() and out.max() <= y.max()


@pytest.mark.parametrize(("shape", "kernel"), [((1, 28, 28), 2), ((3, 32, 32), 2),
                                               ((3, 224, 224), 3)])
def test_paper_defaults_by_input_shape(shape: tuple[int, int, int], kernel: int) -> None:
    assert DEFENSES.build("median", input_shape=shape).kernel == kernel


def test_bpda_identity_gradient_and_unchanged_forward() -> None:
    d = DEFENSES.build("median")
    x = torch.rand(2, 1, 28, 28).requires_grad_(True)
    out = d.attack_forward(x)
    assert torch.equal(out.detach(), d(x.detach())) and not d.differentiable
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("bad", [0, -3, 1.5, "big", True])
def test_bad_kernel_is_a_one_line_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"median.* kernel=.*median\.kernel=") as info:
        DEFENSES.build("median", kernel=bad)
    assert "\n" not in str(info.value)
