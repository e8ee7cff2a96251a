"""The attack contract, checked for every registered attack (a new one is covered by registering).

Steps and query budgets are shrunk for speed generically: a small value is passed for each of
``SMALL``'s options that the attack's constructor accepts; no attack is named here. Every attack
that does not declare itself a ``baseline`` must also really attack: lower a trained model's
accuracy well below its clean accuracy (so ``return x`` does not pass this module).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from bench.accel import precision_scope
from bench.attack import TARGET_MODES, Attack
from bench.errors import ConfigError
from bench.registry import ATTACKS
from tests.attacks.helpers import accuracy

SMALL = {"steps": 2, "n_queries": 20, "n_restarts": 1, "restarts": 1}
# The strength test's budgets: SMALL's are too small to attack at all for some attacks (PGD's
# default step is eps/10, so 2 steps move at most 0.2*eps from its random start; Square's 20
# queries flip few labels). These still run every attack in well under a second here.
STRONG = {"steps": 10, "n_queries": 300, "n_restarts": 1, "restarts": 1}
EPS = 0.1
# At EPS the strength test is generous yet meaningful on :func:`train_logistic`'s images: twice
# the 0.05 at which a gradient attack already flips most labels, while random-sign noise of the
# same size flips none of them (the classes' prototypes are 0.2 apart at most per pixel, the
# within-class spread is 0.02). A drop of MARGIN can come only from reading the model.
MARGIN = 0.5
NAMES = ATTACKS.names()
GRADIENT_FREE = [n for n in NAMES if getattr(ATTACKS.get(n).builder, "gradient_free", False)]
REAL = [n for n in NAMES if not getattr(ATTACKS.get(n).builder, "baseline", False)]


def small(name: str, budget: dict[str, Any] = SMALL) -> dict[str, Any]:
    """The entries of ``budget`` (default ``SMALL``) that the attack's constructor takes."""
    params = inspect.signature(ATTACKS.get(name).builder).parameters
    return {k: v for k, v in budget.items() if k in params}


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
def test_contract_under_bf16_autocast(name: str, tiny_net: nn.Module,
                                      data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``--attack-precision bf16``: the attack runs under autocast, and what it returns still
    meets the contract in float32 (the session casts and validates it as any other set)."""
    x, y = data
    with precision_scope(torch.device("cpu"), "bf16"):
        x_adv = build(name)(tiny_net, x, y).float()
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


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


class Sizes(nn.Module):
    """``net`` recording the batch size of every forward pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.sizes = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.net(x)


@pytest.mark.parametrize("targeted", [None, "least-likely", "random"])
@pytest.mark.parametrize("name", NAMES)
def test_attacking_some_rows_gives_them_what_attacking_all_does(
        name: str, targeted: str | None, tiny_net: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``rows``: those images get, bit for bit, the examples attacking the whole batch gives
    them (the same random stream, the same targets); the others are returned clean. An attack
    that saves work there (it declares ``row_independent`` or overrides ``perturb_rows``)
    attacks nothing but the rows: the harness then skips the images a defense already gets
    wrong without changing any stored flag."""
    x, y = data
    try:
        attack = build(name, targeted=targeted)
    except ConfigError:
        return  # refuses this target mode (test_targeted_random checks the refusal)
    rows = torch.tensor([0, 2, 3, len(x) - 1])
    whole = attack(tiny_net, x, y, seed=3)
    model = Sizes(tiny_net)
    part = attack(model, x, y, seed=3, rows=rows)
    assert torch.equal(part[rows], whole[rows])
    others = torch.ones(len(x), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(part[others], x[others])
    saves = attack.row_independent or type(attack).perturb_rows is not Attack.perturb_rows
    if saves and targeted is None and getattr(attack, "restarts", 1) == 1:
        assert max(model.sizes) == len(rows), f"forward passes of sizes {set(model.sizes)}"
    assert torch.equal(attack(tiny_net, x, y, seed=3, rows=rows[:0]), x)


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


@pytest.mark.parametrize("name", REAL)
def test_lowers_a_trained_models_accuracy(
        name: str, trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    """At a generous eps every real attack, in every target mode it accepts, takes a 100%-accurate
    model at least MARGIN below its clean accuracy (an attack returning ``x`` stays at 100%)."""
    model, x, y = trained
    clean = accuracy(model, x, y)
    weak = []
    for mode in TARGET_MODES:
        try:
            attack = ATTACKS.build(name, eps=EPS, targeted=mode, **small(name, STRONG))
        except ConfigError:
            assert mode is not None, "the untargeted mode must always be accepted"
            continue
        robust = accuracy(model, attack(model, x, y), y)
        if robust > clean - MARGIN:
            weak.append(f"targeted={mode}: accuracy {robust:.2f} (clean {clean:.2f})")
    assert not weak, f"{name} at eps={EPS} does not attack: " + "; ".join(weak)


@pytest.mark.parametrize("name", NAMES)
def test_declares_whether_it_is_a_baseline(name: str) -> None:
    """``baseline`` (exempt from the strength test) is a bool, and only a control that reads no
    gradient (random noise) may claim it: no gradient attack escapes the strength test."""
    builder = ATTACKS.get(name).builder
    assert isinstance(builder.baseline, bool) and isinstance(builder.gradient_free, bool)
    if builder.baseline:
        assert builder.gradient_free, f"{name} is a baseline but reads gradients"


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
