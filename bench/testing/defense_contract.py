"""The defense contract, checked on one registered defense at a time (see docs/plugins.md's plugin
section and :mod:`bench.defense`).

Every defense is built on the kit's tiny digits (:mod:`bench.testing.tiny`: 1x28x28, or 3x32x32
for a defense that needs colour) and, when it ``needs_training``, fitted once through
:func:`bench.defense.fit_or_load` against a tiny trained classifier, with its budget shrunk
through the generic options of :data:`BUDGET` that its constructor takes. No defense is named
here.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.accel import precision_scope, to_memory_format
from bench.cache import Cache
from bench.defense import (
    MODEL,
    PREPROCESSOR,
    Defense,
    FitContext,
    check_output,
    fit_or_load,
    split_spec,
)
from bench.registry import DEFENSES
from bench.runtime import rng_isolated
from bench.testing.core import Check, CheckFailed, CheckSkipped, require
from bench.testing.tiny import SHAPES, budget_options, tiny_dataset, trained_tiny_net

#: Training budgets, passed to every defense whose constructor takes the option.
BUDGET = {"epochs": 1, "warmup_epochs": 1, "batch_size": 32, "steps": 2, "attack_steps": 2}
#: ``fit`` must lower :meth:`Defense.training_loss` by at least this fraction of its value.
LOSS_DROP = 1e-3
MODELS = ("target", "other")  # a composite's classifiers: the kit's target, then its surrogate
PROBE = 8  # test images every forward check runs on


class DefenseBench:
    """The defenses under test, each built, fitted (recording its training loss before and
    after ``fit``) and, for a composite, composed from its fitted parts on first use.

    Args:
        cache_root: folder of the weight cache (a fresh temporary folder: fits are never read
            from, nor written to, the user's cache).
    """

    def __init__(self, cache_root: str | Path) -> None:
        self.cache = Cache(Path(cache_root))
        self._contexts: dict[tuple[int, ...], FitContext] = {}
        self._probes: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._fitted: dict[str, Defense | Exception] = {}
        self.losses: dict[str, tuple[float, float]] = {}

    def shape(self, name: str) -> tuple[int, int, int]:
        """The first of the kit's input shapes ``name`` supports; CheckSkipped if none."""
        cls = DEFENSES.get(name).builder
        unsupported = getattr(cls, "unsupported", None)
        for shape in SHAPES:
            if unsupported is None or not unsupported(shape):
                return shape
        raise CheckSkipped(f"supports none of the kit's input shapes {SHAPES} "
                           f"({unsupported(SHAPES[0])})")

    def context(self, shape: Sequence[int]) -> FitContext:
        """The fit context at ``shape``: the tiny digits, a trained target and a surrogate."""
        shape = tuple(shape)
        if shape not in self._contexts:
            data = tiny_dataset(shape)
            self._contexts[shape] = FitContext(
                data, trained_tiny_net(data, seed=0), [trained_tiny_net(data, seed=1)],
                torch.device("cpu"), self.cache, seed=0, key={"bench.testing": list(shape)})
        return self._contexts[shape]

    def probe(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``PROBE`` test images (N x C x H x W in [0,1]) and labels at ``name``'s shape."""
        shape = self.shape(name)
        if shape not in self._probes:
            self._probes[shape] = self.context(shape).dataset.tensors("test", PROBE)
        x, y = self._probes[shape]
        return x.clone(), y.clone()

    def build(self, name: str) -> Defense:
        """A fresh, unfitted ``name`` at its kit shape with the kit's budget (seeded)."""
        entry, shape = DEFENSES.get(name), self.shape(name)
        with rng_isolated(torch.device("cpu")):
            torch.manual_seed(0)
            return entry.build(input_shape=shape, num_classes=10,
                               **budget_options(entry.builder, BUDGET))

    def fitted(self, name: str) -> Defense:
        """``name`` fitted (when it needs training) and composed, in eval mode; built once."""
        if name not in self._fitted:
            try:
                self._fitted[name] = self._fit(name)
            except CheckSkipped:
                raise
            except Exception as exc:  # noqa: BLE001 - every check of a defense that cannot fit fails
                self._fitted[name] = exc
        done = self._fitted[name]
        if isinstance(done, Exception):
            raise CheckFailed(f"building or fitting it failed: {type(done).__name__}: "
                              f"{done}") from done
        return done

    def _fit(self, name: str) -> Defense:
        defense = self.build(name)
        ctx = self.context(self.shape(name))
        if defense.needs_training:
            before = measured_loss(defense, ctx)
            fit_or_load(defense, ctx)
            self.losses[name] = (before, measured_loss(defense, ctx))
        defense.eval()
        self.compose(defense, ctx)
        return defense

    def compose(self, defense: Defense, ctx: FitContext) -> None:
        """Hand a composite its fitted parts as the harness would (nothing for the others)."""
        parts = defense.parts(MODELS)
        if parts.defenses or parts.models:
            defense.compose([self.fitted(split_spec(p)[0]) for p in parts.defenses],
                            [ctx.classifier if m == MODELS[0] else ctx.surrogates[0]
                             for m in parts.models])


def measured_loss(defense: Defense, ctx: FitContext) -> float:
    """``defense.training_loss(ctx)`` as the kit compares it: in training mode (the objective the
    optimizer sees: batch statistics, not running ones that lag behind after a few steps), under
    a fixed seed, with the module's state and mode restored afterwards."""
    state, mode = copy.deepcopy(defense.state_dict()), defense.training
    defense.train()
    try:
        with rng_isolated(ctx.device):
            torch.manual_seed(1)
            value = float(defense.training_loss(ctx))
    finally:
        defense.load_state_dict(state)
        defense.train(mode)
    require(math.isfinite(value), f"training_loss() returned {value}; it must be finite.")
    return value


# -- the checks ------------------------------------------------------------------------------
def _declares(bench: DefenseBench, name: str) -> None:  # noqa: ARG001 - the bench is unused
    entry = DEFENSES.get(name)
    cls = entry.builder
    require(isinstance(cls, type) and issubclass(cls, Defense),
            f"registered builder {cls!r} is not a subclass of bench.defense.Defense.")
    require(cls.kind in (PREPROCESSOR, MODEL),
            f"kind = {cls.kind!r}; declare kind = 'preprocessor' or 'model'.")
    flags = {f: getattr(cls, f) for f in ("differentiable", "randomized", "needs_training")}
    wrong = [f"{f} = {v!r}" for f, v in flags.items() if not isinstance(v, bool)]
    require(not wrong, f"{', '.join(wrong)}: declare True or False.")


def _documented(bench: DefenseBench, name: str) -> None:  # noqa: ARG001 - the bench is unused
    entry = DEFENSES.get(name)
    require(entry.description, "no description: give the class a docstring whose first "
                               "paragraph says what it does (shown by `python -m bench list`).")
    doc = (inspect.getdoc(inspect.getmodule(entry.builder)) or "") + \
        (inspect.getdoc(entry.builder) or "")
    require("python -m bench" in doc, "no CLI example: put e.g. `python -m bench run --defense "
                                      f"{name} --attack fgsm` in the module or class docstring.")


def _forward(bench: DefenseBench, name: str) -> None:
    defense, (x, _) = bench.fitted(name), bench.probe(name)
    x0 = x.clone()
    check_output(defense, name, x)  # PluginContractError: kind, shape, finiteness, [0,1]
    require(torch.equal(x, x0), "forward() changed its input images in place; work on a copy.")


def _deterministic(bench: DefenseBench, name: str) -> None:
    defense, (x, _) = bench.fitted(name), bench.probe(name)
    outs = []
    for seed in (1, 1, 2):
        with rng_isolated(x.device), torch.no_grad():
            torch.manual_seed(seed)
            outs.append(defense(x))
    require(torch.equal(outs[0], outs[1]),
            "two forward passes under the same torch seed differ: draw randomness from torch's "
            "global RNG only (no private Generator, no NumPy or Python random), so that the "
            "harness can reproduce a cell.")
    if not defense.randomized:
        require(torch.equal(outs[0], outs[2]),
                "its output depends on the random seed but it declares randomized = False: "
                "declare randomized = True (the harness then evaluates it over several draws "
                "and attacks it with EOT).")


def _whitebox_gradient(bench: DefenseBench, name: str) -> None:
    defense, (x, _) = bench.fitted(name), bench.probe(name)
    with rng_isolated(x.device):
        torch.manual_seed(1)
        with torch.no_grad():
            plain = defense(x)
        xg = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        out = defense.attack_forward(xg)
    if not defense.randomized:
        require(torch.allclose(out.detach(), plain, atol=1e-5),
                "attack_forward() returns other values than forward(): it may change the "
                "gradient (BPDA), never the result.")
    out.float().sum().backward()
    require(xg.grad is not None and torch.isfinite(xg.grad).all(),
            "attack_forward() gives no finite input gradient.")
    require(xg.grad.abs().sum() > 0,
            "no gradient reaches the input through attack_forward(): a whitebox attack would be "
            "blind. Declare differentiable = False (BPDA) or override attack_forward().")


def _channels_last_bf16(bench: DefenseBench, name: str) -> None:
    defense, (x, _) = bench.fitted(name), bench.probe(name)
    cl = to_memory_format(copy.deepcopy(defense), True)
    with rng_isolated(x.device), torch.no_grad():
        torch.manual_seed(1)
        plain = defense(x)
        torch.manual_seed(1)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    if not defense.randomized:
        require(torch.allclose(out, plain, atol=1e-4),
                "channels-last weights and inputs (--channels-last) change its output.")
    xg = x.clone().requires_grad_(True)
    with precision_scope(torch.device("cpu"), "bf16"):
        adv = defense.attack_forward(xg)
    adv.float().sum().backward()
    require(xg.grad is not None and torch.isfinite(xg.grad).all(),
            "under bf16 autocast (--attack-precision bf16) its input gradient is not finite.")


def _trainable(bench: DefenseBench, name: str) -> Defense:
    if not getattr(DEFENSES.get(name).builder, "needs_training", False):
        raise CheckSkipped("needs_training is False: nothing to train")
    return bench.fitted(name)


def _weights_cached(bench: DefenseBench, name: str) -> None:
    fitted, again = _trainable(bench, name), bench.build(name)

    def refit(ctx: FitContext) -> dict[str, Any]:
        raise CheckFailed("fit() ran again although its weights were cached: cache_key() must "
                          "not change between two builds with the same options.")

    again.fit = refit  # type: ignore[method-assign]
    ctx = bench.context(bench.shape(name))
    fit_or_load(again, ctx)
    bench.compose(again.eval(), ctx)
    want, got = fitted.state_dict(), again.state_dict()
    require(list(want) == list(got), f"the reloaded state_dict has other keys: "
                                     f"{sorted(set(want) ^ set(got))[:5]}")
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    require(not differ, f"the reloaded weights differ from the trained ones in {differ[:5]}.")
    x, _ = bench.probe(name)
    outs = []
    for d in (fitted, again):
        with rng_isolated(x.device), torch.no_grad():
            torch.manual_seed(1)
            outs.append(d(x))
    require(torch.allclose(outs[0], outs[1], atol=1e-6),
            "reloaded from the cache it computes other outputs than when trained: keep every "
            "trained tensor in the module's state_dict (parameters or buffers, set in fit()), "
            "not in plain attributes.")


def _fit_lowers_loss(bench: DefenseBench, name: str) -> None:
    _trainable(bench, name)
    before, after = bench.losses[name]
    require(after <= before - LOSS_DROP * abs(before),
            f"training_loss() is {before:.6g} before fit() and {after:.6g} after it (at the "
            f"kit's budget {budget_options(DEFENSES.get(name).builder, BUDGET)}): fit() does "
            f"not lower its own objective by {LOSS_DROP:g} of it. Check that fit() updates the "
            f"module's own parameters, or override training_loss() to measure what fit() "
            f"minimizes.")


def _checks() -> tuple[Check[DefenseBench], ...]:
    table: list[tuple[str, str, Callable[[DefenseBench, str], None]]] = [
        ("declares", "a Defense subclass with a valid kind and boolean flags", _declares),
        ("documented", "a description and a `python -m bench` example in its docstrings",
         _documented),
        ("forward", "finite output of the kind's shape (images in [0,1] or N x classes "
                    "logits); input not mutated", _forward),
        ("deterministic", "same seed, same output; no dependence on the seed unless it "
                          "declares randomized", _deterministic),
        ("whitebox-gradient", "attack_forward() has forward()'s values and a finite, nonzero "
                              "input gradient", _whitebox_gradient),
        ("channels-last-bf16", "same output with channels-last; finite gradient under bf16 "
                               "autocast", _channels_last_bf16),
        ("weights-cached", "trained weights are cached and reloaded, not retrained "
                           "(trainable only)", _weights_cached),
        ("fit-lowers-loss", "fit() lowers its own training_loss() (trainable only)",
         _fit_lowers_loss),
    ]
    return tuple(Check(n, s, f) for n, s, f in table)


DEFENSE_CHECKS: tuple[Check[DefenseBench], ...] = _checks()

