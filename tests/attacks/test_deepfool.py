"""DeepFool: the L-inf projection of its L2 output, tuple outputs, untargeted only."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchattacks

from bench.errors import ConfigError
from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy


def test_output_is_torchattacks_deepfool_projected(trained) -> None:
    model, x, y = trained
    x, y = x[:32], y[:32]
    raw = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    for eps in (1.0, 0.02):
        x_adv = ATTACKS.build("deepfool", eps=eps)(model, x, y)
        expected = (x + (raw - x).clamp(-eps, eps)).clamp(0, 1)
        assert torch.allclose(x_adv, expected, atol=1e-6)
    assert accuracy(model, ATTACKS.build("deepfool", eps=1.0)(model, x, y), y) < 0.1


def test_tuple_output_is_accepted(monkeypatch, tiny_net, batch) -> None:
    x, y = batch
    attack = ATTACKS.build("deepfool", eps=0.1)

    def make(model: Any) -> Any:
        return lambda images, labels: (images + 0.5, labels)

    monkeypatch.setattr(attack, "make", make)
    x_adv = attack(tiny_net, x, y)
    assert torch.allclose(x_adv, (x + 0.1).clamp(0, 1))


@pytest.mark.parametrize("option", [{"targeted": "random"}, {"alpha": 0.01},
                                    {"overshoot": -1.0}])
def test_bad_options_are_rejected(option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(option))):
        ATTACKS.build("deepfool", eps=0.1, **option)
