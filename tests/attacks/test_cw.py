"""The L-inf CW attack: the margin's sign, the kappa clip, and that it attacks like PGD."""

from __future__ import annotations

import pytest
import torch

from bench.attacks.cw import cw_margin
from bench.errors import ConfigError
from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy

LOGITS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])


def test_margin_is_positive_exactly_when_fooled() -> None:
    correct = torch.tensor([0, 2])
    wrong = torch.tensor([1, 1])
    assert torch.equal(cw_margin(LOGITS, correct), torch.tensor([-2.0, -3.0]))
    assert torch.equal(cw_margin(LOGITS, wrong), torch.tensor([2.0, 3.0]))


def test_targeted_margin_is_positive_exactly_at_the_target() -> None:
    assert torch.equal(cw_margin(LOGITS, torch.tensor([0, 2]), targeted=True),
                       torch.tensor([2.0, 3.0]))
    assert torch.equal(cw_margin(LOGITS, torch.tensor([2, 0]), targeted=True),
                       torch.tensor([-3.0, -5.0]))


def test_step_rule_is_pgds() -> None:
    assert ATTACKS.build("cw100", eps=0.08).step_size() == pytest.approx(0.08 / 40)
    assert ATTACKS.build("cw100", eps=0.08, steps=10).step_size() == pytest.approx(0.008)


def test_kappa_zero_leaves_misclassified_images_alone(trained) -> None:
    model, x, y = trained
    wrong = (y + 1) % 4  # every image is "misclassified" w.r.t. these labels
    attack = ATTACKS.build("cw100", eps=0.05, steps=5, random_start=False)
    assert torch.equal(attack(model, x, wrong), x)


def test_cw_beats_noise(trained) -> None:
    model, x, y = trained
    noise = accuracy(model, ATTACKS.build("noise", eps=0.05)(model, x, y), y)
    cw = accuracy(model, ATTACKS.build("cw100", eps=0.05, steps=20)(model, x, y), y)
    assert cw < noise - 0.5


def test_targeted_cw_reaches_targets(trained) -> None:
    model, x, y = trained
    attack = ATTACKS.build("cw100", eps=0.05, targeted="least-likely", steps=20)
    target = attack.target_labels(model, x, y)
    with torch.no_grad():
        before = (model(x).argmax(1) == target).float().mean()
        after = (model(attack(model, x, y)).argmax(1) == target).float().mean()
    assert before == 0 and after > 0.2


def test_negative_kappa_is_rejected() -> None:
    with pytest.raises(ConfigError, match="kappa"):
        ATTACKS.build("cw100", eps=0.1, kappa=-1.0)
