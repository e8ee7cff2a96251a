"""APGD and AutoAttack: options reach torchattacks, the reference settings, untargeted only."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchattacks

from bench.errors import ConfigError
from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy


def test_apgd_settings_reach_torchattacks(tiny_net) -> None:
    atk = ATTACKS.build("apgd-dlr", eps=0.1, steps=7).make(tiny_net)
    assert isinstance(atk, torchattacks.APGD)
    assert (atk.norm, atk.eps, atk.steps, atk.loss) == ("Linf", 0.1, 7, "dlr")


@pytest.mark.parametrize(("name", "small"), [("apgd", {"steps": 5}),
                                             ("autoattack", {"steps": 5, "n_queries": 20})])
def test_per_call_seed_reaches_torchattacks(name: str, small: dict[str, int], trained) -> None:
    """torchattacks reseeds torch from its own seed: the one Attack.__call__ set must reach it."""
    model, x, y = trained
    attack = ATTACKS.build(name, eps=0.05, **small)
    a, b = attack(model, x, y, seed=1), attack(model, x, y, seed=2)
    assert torch.equal(a, attack(model, x, y, seed=1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(("n_classes", "targets"), [(10, 9), (5, 4), (1000, 9)])
def test_autoattack_uses_reference_iterations_and_targets(tiny_net, n_classes: int,
                                                          targets: int) -> None:
    atk = ATTACKS.build("autoattack", eps=0.1, steps=7, n_queries=33).make(tiny_net, n_classes)
    subs = atk._autoattack.attacks
    assert [type(s).__name__ for s in subs] == ["APGD", "APGDT", "FAB", "Square"]
    assert [getattr(s, "steps", None) for s in subs[:3]] == [7, 7, 7]
    assert subs[3].n_queries == 33
    assert subs[1].n_target_classes == subs[2].n_target_classes == targets


def test_autoattack_needs_four_classes(tiny_net) -> None:
    with pytest.raises(ConfigError, match="4 classes"):
        ATTACKS.build("autoattack", eps=0.1).make(tiny_net, 3)


def test_apgd_beats_noise(trained) -> None:
    model, x, y = trained
    assert accuracy(model, ATTACKS.build("apgd", eps=0.05, steps=10)(model, x, y), y) < 0.5


@pytest.mark.parametrize("name", ["apgd", "autoattack"])
@pytest.mark.parametrize("option", [{"targeted": "least-likely"}, {"alpha": 0.01}])
def test_bad_options_are_rejected(name: str, option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(option))):
        ATTACKS.build(name, eps=0.1, **option)
