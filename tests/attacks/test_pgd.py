"""PGD mechanics: the step rule, alpha overrides, the random start, and that it beats noise."""

from __future__ import annotations

import pytest
import torch

from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy

EPS = 0.05


@pytest.mark.parametrize(("name", "divisor"), [("pgd10", 10), ("pgd20", 10), ("pgd40", 16),
                                               ("pgd100", 40), ("pgd1000", 400),
                                               ("pgd2000", 800)])
def test_step_rule(name: str, divisor: int) -> None:
    """``min(eps/10, 2.5*eps/steps)``: eps/10 up to 25 steps, 2.5*eps/steps beyond."""
    attack = ATTACKS.build(name, eps=0.08)
    assert attack.step_size() == pytest.approx(0.08 / divisor)
    assert attack.describe()["alpha"] == attack.step_size()


def test_alpha_override_is_used(linear2) -> None:
    model, x, y = linear2
    attack = ATTACKS.build("pgd10", eps=0.1, alpha=0.03, steps=1, random_start=False)
    assert attack.step_size() == 0.03
    x_adv = attack(model, x, y)
    inside = (x > 0.1) & (x < 0.9)
    moved = (x_adv - x).abs()[inside]
    assert torch.allclose(moved, torch.full_like(moved, 0.03), atol=1e-6)


def test_random_start_depends_on_seed(tiny_net, batch) -> None:
    x, y = batch
    attack = ATTACKS.build("pgd10", eps=0.1, steps=1)
    a, b = attack(tiny_net, x, y, seed=1), attack(tiny_net, x, y, seed=2)
    assert not torch.equal(a, b)
    assert torch.equal(a, attack(tiny_net, x, y, seed=1))


def test_pgd_beats_noise(trained) -> None:
    model, x, y = trained
    noise = accuracy(model, ATTACKS.build("noise", eps=EPS)(model, x, y), y)
    pgd = accuracy(model, ATTACKS.build("pgd10", eps=EPS, steps=20)(model, x, y), y)
    assert noise > 0.95
    assert pgd < noise - 0.5


def test_targeted_pgd_raises_target_probability(trained) -> None:
    model, x, y = trained
    attack = ATTACKS.build("pgd10", eps=EPS, targeted="random", steps=20)
    target = attack.target_labels(model, x, y)
    assert not (target == y).any()
    x_adv = attack(model, x, y)
    with torch.no_grad():
        before = model(x).softmax(1).gather(1, target[:, None])
        after = model(x_adv).softmax(1).gather(1, target[:, None])
    assert (after > before).float().mean() > 0.95
    assert after.mean() > 2 * before.mean()
