"""MI-FGSM mechanics: the default step, momentum along a fixed sign, zero gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy


def test_default_step_is_eps_over_steps() -> None:
    attack = ATTACKS.build("mifgsm10", eps=0.08)
    assert attack.step_size() == pytest.approx(0.008)
    assert attack.decay == 1.0


def test_constant_sign_reaches_the_corner(linear2) -> None:
    model, x, y = linear2
    x_adv = ATTACKS.build("mifgsm10", eps=0.1)(model, x, y)
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y).backward()
    assert torch.allclose(x_adv, (x + 0.1 * xg.grad.sign()).clamp(0, 1), atol=1e-6)


def test_zero_gradient_stays_put(batch) -> None:
    """A constant model has zero input gradient: the image stays where it is, finite."""
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    nn.init.zeros_(model[1].weight)
    x_adv = ATTACKS.build("mifgsm10", eps=0.1)(model, x, y)
    assert torch.equal(x_adv, x)


def test_mifgsm_beats_noise(trained) -> None:
    model, x, y = trained
    assert accuracy(model, ATTACKS.build("mifgsm10", eps=0.05)(model, x, y), y) < 0.5


def test_negative_decay_is_rejected() -> None:
    with pytest.raises(ConfigError, match="decay"):
        ATTACKS.build("mifgsm10", eps=0.1, decay=-0.5)
