"""Square Attack: settings reach torchattacks, it needs only logits, it finds adversarials."""

from __future__ import annotations

from typing import Any

import pytest
import torchattacks

from bench.errors import ConfigError
from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy


def test_settings_reach_torchattacks(tiny_net) -> None:
    attack = ATTACKS.build("square", eps=0.1, n_queries=50, p_init=0.5)
    assert attack.gradient_free
    atk = attack.make(tiny_net)
    assert isinstance(atk, torchattacks.Square)
    assert (atk.norm, atk.eps, atk.n_queries, atk.p_init, atk.loss) == ("Linf", 0.1, 50, 0.5,
                                                                        "margin")


def test_square_lowers_accuracy(trained) -> None:
    model, x, y = trained
    x, y = x[:50], y[:50]
    assert accuracy(model, ATTACKS.build("square", eps=0.1, n_queries=100)(model, x, y), y) < 0.5


@pytest.mark.parametrize("option", [{"alpha": 0.01}, {"loss": "dlr"}, {"p_init": 0.0},
                                    {"n_queries": 0}])
def test_bad_options_are_rejected(option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(option))):
        ATTACKS.build("square", eps=0.1, **option)
