"""The attack contract, checked for every registered attack (a new one is covered by registering).

Steps and query budgets are shrunk for speed generically: a small value is passed for each of
``SMALL``'s options that the attack's constructor accepts; no attack is named here.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from bench.attack import Attack
from bench.errors import ConfigError
from bench.registry import ATTACKS

SMALL = {"steps": 2, "n_queries": 20, "n_restarts": 1}
EPS = 0.1
NAMES = ATTACKS.names()
GRADIENT_FREE = [n for n in NAMES if getattr(ATTACKS.get(n).builder, "gradient_free", False)]


def small(name: str) -> dict[str, Any]:
    """The entries of ``SMALL`` that the attack's constructor takes."""
    params = inspect.signature(ATTACKS.get(name).builder).parameters
    return {k: v for k, v in SMALL.items() if k in params}


def build(name: str, **kwargs: Any) -> Attack:
    return ATTACKS.build(name, **{"eps": EPS, **small(name), **kwargs})


@pytest.fixture
def data(tiny_net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The conftest batch labelled with the net's own predictions, so every image is attacked."""
    x, _ = batch
    with torch.no_grad():
        return x, tiny_net(x).argmax(1)


@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, tiny_net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    x0 = x.clone()
    tiny_net.train()
    attack = build(name)
    assert isinstance(attack, Attack)
    x_adv = attack(tiny_net, x, y)
    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x, x0), "the attack mutated its input"
    assert tiny_net.training, "training mode not restored"
    for p in tiny_net.parameters():
        assert p.requires_grad and p.grad is None
    assert torch.equal(attack(tiny_net, x, y), x_adv), "not deterministic under one seed"


@pytest.mark.parametrize("name", NAMES)
def test_the_callers_random_stream_is_untouched(name: str, tiny_net: nn.Module,
                                                data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """What runs after an attack draws the same numbers whether the attack ran or not (its result
    may come from a cache instead)."""
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    build(name)(tiny_net, *data, seed=5)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("name", NAMES)
def test_zero_eps_returns_input(name: str, tiny_net: nn.Module,
                                data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    assert torch.equal(build(name, eps=0.0)(tiny_net, x, y), x)


@pytest.mark.parametrize("name", NAMES)
def test_targeted_random(name: str, tiny_net: nn.Module,
                         data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Targeting works, or is refused with ConfigError when the attack is built."""
    x, y = data
    try:
        attack = build(name, targeted="random")
    except ConfigError as exc:
        assert "targeted" in str(exc)
        return
    x_adv = attack(tiny_net, x, y)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= EPS + 1e-6
    assert torch.equal(attack(tiny_net, x, y), x_adv)


@pytest.mark.parametrize("name", NAMES)
def test_step_size_recorded(name: str) -> None:
    attack = build(name)
    step = attack.step_size()
    assert step is None or 0 < step <= EPS
    assert attack.describe()["alpha"] == step
    assert attack.name == name


@pytest.mark.parametrize("name", NAMES)
def test_documented(name: str) -> None:
    """Each attack names its paper or rationale (a link), its arguments and a CLI example."""
    builder = ATTACKS.get(name).builder
    module_doc = inspect.getmodule(builder).__doc__ or ""
    class_doc = inspect.getdoc(builder) or ""
    assert "https://" in module_doc and "Arguments:" in module_doc
    assert "python -m bench run --attack" in module_doc + class_doc
    assert "Args:" in class_doc


@pytest.mark.parametrize("name", GRADIENT_FREE)
def test_gradient_free_needs_no_gradient(name: str, tiny_net: nn.Module,
                                         data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A gradient-free attack runs on a model whose outputs carry no gradient at all."""

    class NoGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).detach()

    x, y = data
    x_adv = build(name)(NoGrad(), x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_contract_on_cuda(name: str, tiny_net: nn.Module,
                          data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Every attack keeps CUDA inputs on the device and meets the contract there."""
    x, y = (t.cuda() for t in data)
    model = tiny_net.cuda()
    attack = build(name)
    x_adv = attack(model, x, y)
    assert x_adv.device == x.device
    assert torch.equal(attack(model, x, y), x_adv)
    try:
        targeted = build(name, targeted="random")
    except ConfigError:
        return
    assert (targeted(model, x, y) - x).abs().max() <= EPS + 1e-6
