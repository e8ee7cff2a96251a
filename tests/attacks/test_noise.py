"""The random-sign noise baseline: exactly +-eps per pixel, seeded, label-free."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench.errors import ConfigError
from bench.registry import ATTACKS


def test_every_unclipped_pixel_moves_by_eps(tiny_net, batch) -> None:
    x, y = batch
    x_adv = ATTACKS.build("noise", eps=0.1)(tiny_net, x, y)
    d = x_adv - x
    unclipped = (x_adv > 0) & (x_adv < 1)
    assert torch.allclose(d[unclipped].abs(), torch.full_like(d[unclipped], 0.1), atol=1e-6)
    assert 0.45 < (d > 0).float().mean() < 0.55


def test_seeded(tiny_net, batch) -> None:
    x, y = batch
    attack = ATTACKS.build("noise", eps=0.1)
    assert torch.equal(attack(tiny_net, x, y, seed=1), attack(tiny_net, x, y, seed=1))
    assert not torch.equal(attack(tiny_net, x, y, seed=1), attack(tiny_net, x, y, seed=2))


@pytest.mark.parametrize("option", [{"targeted": "random"}, {"alpha": 0.01}])
def test_bad_options_are_rejected(option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(option))):
        ATTACKS.build("noise", eps=0.1, **option)
