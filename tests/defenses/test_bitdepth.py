"""Bit-depth reduction: exactly 2^bits levels, Xu et al.'s rounding and defaults, BPDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import ConfigError
from bench.registry import DEFENSES


@pytest.mark.parametrize("bits", range(1, 9))
def test_exactly_two_to_the_bits_levels(bits: int) -> None:
    x = torch.linspace(0, 1, 4001).view(1, 1, 1, -1)
    out = DEFENSES.build("bitdepth", bits=bits)(x)
    levels = torch.unique(out)
    assert len(levels) == 2 ** bits
    assert torch.allclose(levels, torch.linspace(0, 1, 2 ** bits))
    assert out.shape == x.shape and out.min() == 0 and out.max() == 1


def test_matches_the_reference_reduce_precision_np() -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for bits in (1, 3, 5):
        npp_int = 2 ** bits - 1
        ref = np.rint(x.numpy() * npp_int) / npp_int  # EvadeML-Zoo reduce_precision_np
        out = DEFENSES.build("bitdepth", input_shape=(3, 8, 8), bits=bits)(x)
        assert np.allclose(out.numpy(), ref, atol=1e-7)


def test_eight_bits_is_the_identity_on_8_bit_images() -> None:
    x = torch.randint(0, 256, (2, 1, 28, 28)).float() / 255
    assert torch.allclose(DEFENSES.build("bitdepth", bits=8)(x), x, atol=1e-7)


@pytest.mark.parametrize(("shape", "bits"), [((1, 28, 28), 1), ((3, 32, 32), 5),
                                             ((3, 299, 299), 4)])
def test_paper_defaults_by_input_shape(shape: tuple[int, int, int], bits: int) -> None:
    d = DEFENSES.build("bitdepth", input_shape=shape)
    assert d.bits == bits and d.metadata()["bits"] == bits


def test_bpda_identity_gradient_and_unchanged_forward() -> None:
    d = DEFENSES.build("bitdepth", bits=2)
    x = torch.rand(2, 1, 28, 28).requires_grad_(True)
    out = d.attack_forward(x)
    assert torch.equal(out.detach(), d(x.detach())) and not d.differentiable
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("bad", [0, 9, -1, 2.5, "four", True])
def test_bad_bits_is_a_one_line_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"bitdepth.* bits=.*bitdepth\.bits=") as info:
        DEFENSES.build("bitdepth", bits=bad)
    assert "\n" not in str(info.value)
