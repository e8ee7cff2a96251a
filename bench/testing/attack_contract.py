"""The attack contract, checked on one registered attack at a time (see docs/plugins.md's plugin
section and :mod:`bench.attack`).

Calling an attack (:meth:`bench.attack.Attack.__call__`) already refuses a batch of the wrong
shape, outside [0,1] or the eps-ball, non-finite, or made by mutating the input, with an
:class:`~bench.errors.AttackValidationError`: those checks pass when the call returns. What the
checks here add is what only the plugin decides: determinism under a seed, the targeting modes,
``eps = 0``, attacking some rows, bf16 autocast, gradient-free operation and, above all, that a
real attack fools a model (an attack returning ``x`` does not). Steps and query budgets are
shrunk through the generic options of :data:`BUDGET` that the constructor takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.accel import precision_scope
from bench.attack import TARGET_MODES, Attack
from bench.errors import ConfigError
from bench.registry import ATTACKS
from bench.testing.core import Check, CheckSkipped, require
from bench.testing.tiny import TinyNet, accuracy, budget_options, train_logistic

EPS = 0.1
BUDGET = {"steps": 2, "n_queries": 20, "n_restarts": 1, "restarts": 1}
# The fooling check's budgets: BUDGET's are too small to attack at all for some attacks (PGD's
# default step is eps/10, so 2 steps move at most 0.2*eps from its random start; Square's 20
# queries flip few labels). These still run every built-in attack in well under a second.
STRONG = {"steps": 10, "n_queries": 300, "n_restarts": 1, "restarts": 1}
# At EPS the fooling check is generous yet meaningful on train_logistic's images: twice the 0.05
# at which a gradient attack already flips most labels, while random-sign noise of the same size
# flips none of them (the classes' prototypes are 0.2 apart at most per pixel, the within-class
# spread is 0.02). A drop of MARGIN can come only from reading the model.
MARGIN = 0.5


class AttackBench:
    """What the attack checks run on: a small random-weight CNN with a batch of 8 images labelled
    by its own predictions (so every image is attacked), and a 100%-accurate model to fool."""

    def __init__(self) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = TinyNet().eval()
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(8, 1, 28, 28, generator=gen)
        with torch.no_grad():
            self.y = self.net(self.x).argmax(1)
        self._trained: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None

    @property
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the batch ``(x, y)``: N x 1 x 28 x 28 in [0,1], the net's predictions."""
        return self.x.clone(), self.y.clone()

    @property
    def trained(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """:func:`bench.testing.tiny.train_logistic`'s model, images and labels (made once)."""
        if self._trained is None:
            self._trained = train_logistic()
        return self._trained

    def build(self, name: str, budget: dict[str, Any] = BUDGET, **kwargs: Any) -> Attack:
        """``name`` at eps :data:`EPS` with ``budget``'s options that it takes."""
        entry = ATTACKS.get(name)
        return entry.build(**{"eps": EPS, **budget_options(entry.builder, budget), **kwargs})


def _declares(bench: AttackBench, name: str) -> None:
    builder = ATTACKS.get(name).builder
    attack = bench.build(name)
    require(isinstance(attack, Attack), f"building it gave {type(attack).__name__}, not a "
                                        f"subclass of bench.attack.Attack.")
    flags = {f: getattr(builder, f, None) for f in ("gradient_free", "baseline")}
    wrong = [f"{f} = {v!r}" for f, v in flags.items() if not isinstance(v, bool)]
    require(not wrong, f"{', '.join(wrong)}: declare True or False.")
    require(not flags["baseline"] or flags["gradient_free"],
            "it declares baseline = True (exempt from the fooling check) but reads gradients: "
            "only a control that reads no gradient (random noise) may be a baseline.")
    step = attack.step_size()
    require(step is None or 0 < step <= EPS,
            f"step_size() is {step!r} at eps {EPS}: return None or the step used, in (0, eps].")
    require(attack.describe()["alpha"] == step, "describe()['alpha'] is not step_size().")
    require(attack.name == name, f"its name is {attack.name!r}, registered as {name!r}.")


def _documented(bench: AttackBench, name: str) -> None:  # noqa: ARG001 - the bench is unused
    builder = ATTACKS.get(name).builder
    module_doc = inspect.getmodule(builder).__doc__ or ""
    class_doc = inspect.getdoc(builder) or ""
    missing = [what for what, ok in [
        ("a link to the paper (https://...) in the module docstring", "https://" in module_doc),
        ("an 'Arguments:' section in the module docstring", "Arguments:" in module_doc),
        ("an 'Args:' section in the class docstring", "Args:" in class_doc),
        (f"a CLI example (python -m bench run --attack {name} ...)",
         "python -m bench run --attack" in module_doc + class_doc)] if not ok]
    require(not missing, "its docstrings lack " + "; ".join(missing) + ".")


def _valid_deterministic(bench: AttackBench, name: str) -> None:
    x, y = bench.data
    attack = bench.build(name)
    x_adv = attack(bench.net, x, y)  # validated by Attack.__call__ (AttackValidationError)
    require(torch.equal(attack(bench.net, x, y), x_adv),
            "two calls with the same seed give different examples: draw randomness from torch's "
            "global RNG only (the harness seeds it per batch).")


def _bf16(bench: AttackBench, name: str) -> None:
    x, y = bench.data
    with precision_scope(torch.device("cpu"), "bf16"):
        bench.build(name)(bench.net, x, y)  # --attack-precision bf16; validated by __call__


def _zero_eps(bench: AttackBench, name: str) -> None:
    x, y = bench.data
    require(torch.equal(bench.build(name, eps=0.0)(bench.net, x, y), x),
            "at eps = 0 it does not return the clean images unchanged.")


def _targeted(bench: AttackBench, name: str) -> None:
    x, y = bench.data
    try:
        attack = bench.build(name, targeted="random")
    except ConfigError as exc:
        require("targeted" in str(exc), f"it refuses targeted='random' with a ConfigError that "
                                        f"does not mention 'targeted': {exc}")
        raise CheckSkipped("refuses targeted modes (a ConfigError naming 'targeted')") from None
    x_adv = attack(bench.net, x, y)
    require(torch.equal(attack(bench.net, x, y), x_adv),
            "targeted='random' is not deterministic under one seed.")


class _Sizes(nn.Module):
    """``net`` recording the batch size of every forward pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.sizes = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.net(x)


def _rows(bench: AttackBench, name: str) -> None:
    x, y = bench.data
    rows = torch.tensor([0, 2, 3, len(x) - 1])
    others = torch.ones(len(x), dtype=torch.bool)
    others[rows] = False
    for mode in TARGET_MODES:
        try:
            attack = bench.build(name, targeted=mode)
        except ConfigError:
            continue  # a refused target mode (the targeted check judges the refusal)
        whole = attack(bench.net, x, y, seed=3)
        model = _Sizes(bench.net)
        part = attack(model, x, y, seed=3, rows=rows)
        require(torch.equal(part[rows], whole[rows]),
                f"targeted={mode}: attacking only some rows gives them other examples than "
                f"attacking the whole batch (perturb_rows must equal perturb(...)[rows]).")
        require(torch.equal(part[others], x[others]),
                f"targeted={mode}: the rows not asked for are not returned clean.")
        saves = attack.row_independent or type(attack).perturb_rows is not Attack.perturb_rows
        if saves and mode is None and getattr(attack, "restarts", 1) == 1:
            require(max(model.sizes) == len(rows),
                    f"it declares row_independent (or overrides perturb_rows) but ran forward "
                    f"passes of sizes {sorted(set(model.sizes))} for {len(rows)} rows.")
        require(torch.equal(attack(bench.net, x, y, seed=3, rows=rows[:0]), x),
                "with no rows asked for, it does not return the clean images.")


def _fools(bench: AttackBench, name: str) -> None:
    if getattr(ATTACKS.get(name).builder, "baseline", False):
        raise CheckSkipped("declares baseline = True (a control, not expected to fool)")
    model, x, y = bench.trained
    clean = accuracy(model, x, y)
    weak = []
    for mode in TARGET_MODES:
        try:
            attack = bench.build(name, STRONG, targeted=mode)
        except ConfigError:
            require(mode is not None, "it refuses the untargeted mode, which every attack takes.")
            continue
        robust = accuracy(model, attack(model, x, y), y)
        if robust > clean - MARGIN:
            weak.append(f"targeted={mode}: accuracy {robust:.2f}")
    require(not weak, f"at eps={EPS} it does not fool a model that is {clean:.0%} accurate "
                      f"(it must take the accuracy {MARGIN:g} lower; {'; '.join(weak)}). An "
                      f"attack that returns x stays at 100%; a control that is not meant to "
                      f"fool declares baseline = True.")


def _gradient_free(bench: AttackBench, name: str) -> None:
    if not getattr(ATTACKS.get(name).builder, "gradient_free", False):
        raise CheckSkipped("reads gradients (gradient_free = False)")

    class NoGrad(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).detach()

    x, y = bench.data
    bench.build(name)(NoGrad(bench.net), x, y)  # raises if it asks for a gradient


def _cuda(bench: AttackBench, name: str) -> None:
    if not torch.cuda.is_available():
        raise CheckSkipped("no CUDA device")
    x, y = (t.cuda() for t in bench.data)
    model = TinyNet().cuda().eval()
    model.load_state_dict(bench.net.state_dict())
    attack = bench.build(name)
    x_adv = attack(model, x, y)
    require(x_adv.device == x.device, f"CUDA inputs came back on {x_adv.device}.")
    require(torch.equal(attack(model, x, y), x_adv), "on CUDA, one seed gives two results.")


def _checks() -> tuple[Check[AttackBench], ...]:
    table: list[tuple[str, str, Callable[[AttackBench, str], None]]] = [
        ("declares", "an Attack subclass; boolean flags; only gradient-free controls are "
                     "baselines; step size recorded", _declares),
        ("documented", "a paper link, 'Arguments:', 'Args:' and a CLI example", _documented),
        ("valid-deterministic", "a valid batch (shape, [0,1], eps-ball, input untouched), the "
                                "same under one seed", _valid_deterministic),
        ("bf16", "runs under bf16 autocast (--attack-precision bf16)", _bf16),
        ("zero-eps", "eps = 0 returns the clean images", _zero_eps),
        ("targeted", "targeted='random' works deterministically, or is refused naming "
                     "'targeted'", _targeted),
        ("rows", "attacking some rows gives them what attacking all does, the rest clean",
         _rows),
        ("fools", f"takes a 100%-accurate model {MARGIN:g} lower at eps {EPS} (unless a "
                  f"baseline)", _fools),
        ("gradient-free", "runs on a model whose outputs carry no gradient (gradient_free "
                          "only)", _gradient_free),
        ("cuda", "keeps CUDA inputs on the device, deterministic there (with a GPU)", _cuda),
    ]
    return tuple(Check(n, s, f) for n, s, f in table)


ATTACK_CHECKS: tuple[Check[AttackBench], ...] = _checks()
