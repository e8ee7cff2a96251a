"""FGSM and I-FGSM mechanics on linear models, where the answer is known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.registry import ATTACKS


def fgsm_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y).backward()
    return (x + eps * xg.grad.sign()).clamp(0, 1)


def test_fgsm_is_one_signed_gradient_step(linear2) -> None:
    model, x, y = linear2
    x_adv = ATTACKS.build("fgsm", eps=0.1)(model, x, y)
    assert torch.allclose(x_adv, fgsm_reference(model, x, y, 0.1), atol=1e-6)
    moved = (x_adv - x).abs()
    inside = (x > 0.1) & (x < 0.9)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 0.1), atol=1e-6)


def test_fgsm_step_is_eps_and_alpha_caps_at_eps() -> None:
    assert ATTACKS.build("fgsm", eps=0.1).step_size() == 0.1
    assert ATTACKS.build("fgsm", eps=0.1, alpha=0.05).step_size() == 0.05
    assert ATTACKS.build("fgsm", eps=0.1, alpha=0.5).step_size() == 0.1


@pytest.mark.parametrize(("name", "steps"), [("ifgsm2", 2), ("ifgsm4", 4), ("ifgsm8", 8)])
def test_ifgsm_default_step_is_eps_over_steps(name: str, steps: int) -> None:
    attack = ATTACKS.build(name, eps=0.08)
    assert attack.steps == steps
    assert attack.step_size() == pytest.approx(0.08 / steps)
    assert ATTACKS.build(name, eps=0.08, alpha=0.03).step_size() == 0.03


def test_ifgsm_adds_up_to_fgsm_when_the_gradient_sign_is_constant(linear2) -> None:
    """No random start: n steps of eps/n along a fixed sign land exactly on FGSM's point."""
    model, x, y = linear2
    x_adv = ATTACKS.build("ifgsm4", eps=0.1)(model, x, y)
    assert torch.allclose(x_adv, fgsm_reference(model, x, y, 0.1), atol=1e-6)


def test_ifgsm_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="steps"):
        ATTACKS.build("ifgsm4", eps=0.1, steps=0)
    with pytest.raises(ConfigError, match="alpha"):
        ATTACKS.build("ifgsm4", eps=0.1, alpha=-1.0)
