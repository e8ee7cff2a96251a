"""The checks every adversarial batch passes before it is recorded: :func:`validate_adversarial`
refuses each kind of invalid batch and accepts the boundary cases, :func:`check_finite` refuses
NaN and infinity, :meth:`Attack.__call__` refuses a plugin that mutates its input or returns an
invalid batch, and through the runner such an attack stops the grid with nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.attack import TOLERANCE, Attack, frozen, validate_adversarial
from bench.cache import Cache
from bench.config import RunConfig
from bench.errors import AttackValidationError, NonFiniteError
from bench.executors import run_grid
from bench.registry import ATTACKS
from bench.runtime import check_finite
from bench.store import Store

EPS = 0.25  # exact in binary, so "exactly eps" is exact in float32 too


@pytest.fixture
def x() -> torch.Tensor:
    """Clean images 2 x 1 x 4 x 4 at 0.5, with one pixel at 0 and one at 1."""
    x = torch.full((2, 1, 4, 4), 0.5)
    x[0, 0, 0, 0], x[1, 0, 3, 3] = 0.0, 1.0
    return x


def with_pixel(x: torch.Tensor, value: float, at: tuple[int, ...] = (0, 0, 0, 0)
               ) -> torch.Tensor:
    out = x.clone()
    out[at] = value
    return out


INVALID: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "a pixel fewer": (lambda x: x[..., :3], "shape"),
    "an image fewer": (lambda x: x[:1], "shape"),
    "NaN": (lambda x: with_pixel(x, float("nan"), (1, 0, 1, 1)), "NaN or infinite"),
    "+inf": (lambda x: with_pixel(x, float("inf"), (1, 0, 1, 1)), "NaN or infinite"),
    "-inf": (lambda x: with_pixel(x, float("-inf"), (1, 0, 1, 1)), "NaN or infinite"),
    "below 0": (lambda x: with_pixel(x, -2 * TOLERANCE), r"\[0,1\] pixel range"),
    "above 1": (lambda x: with_pixel(x, 1 + 2 * TOLERANCE, (1, 0, 3, 3)),
                r"\[0,1\] pixel range"),
    "outside the ball": (lambda x: with_pixel(x, 0.5 + EPS + 4 * TOLERANCE, (0, 0, 2, 2)),
                         "L-inf ball"),
    "outside the ball, below": (lambda x: with_pixel(x, 0.5 - EPS - 4 * TOLERANCE, (0, 0, 2, 2)),
                                "L-inf ball"),
}
VALID: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "unchanged": lambda x: x.clone(),
    "exactly eps": lambda x: (x + EPS).clamp(0, 1),
    "exactly -eps": lambda x: (x - EPS).clamp(0, 1),
    "eps within the tolerance": lambda x: with_pixel(x, 0.5 + EPS + TOLERANCE / 2, (0, 0, 2, 2)),
    "0 within the tolerance": lambda x: with_pixel(x, -TOLERANCE / 2),
    "1 within the tolerance": lambda x: with_pixel(x, 1 + TOLERANCE / 2, (1, 0, 3, 3)),
}


@pytest.mark.parametrize("case", INVALID)
def test_each_kind_of_invalid_batch_is_refused(case: str, x: torch.Tensor) -> None:
    make, message = INVALID[case]
    with pytest.raises(AttackValidationError, match=message) as info:
        validate_adversarial(x, make(x), EPS, "tmp-attack")
    assert "tmp-attack" in str(info.value) and "nothing was recorded" in str(info.value)


@pytest.mark.parametrize("case", VALID)
def test_the_boundary_cases_are_accepted(case: str, x: torch.Tensor) -> None:
    validate_adversarial(x, VALID[case](x), EPS)


def test_zero_eps_accepts_only_the_clean_batch(x: torch.Tensor) -> None:
    validate_adversarial(x, x.clone(), 0.0)
    validate_adversarial(x, with_pixel(x, 0.5 + TOLERANCE / 2, (0, 0, 2, 2)), 0.0)
    with pytest.raises(AttackValidationError, match="L-inf ball"):
        validate_adversarial(x, with_pixel(x, 0.5 + 4 * TOLERANCE, (0, 0, 2, 2)), 0.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_refuses_nan_and_infinity(value: float) -> None:
    t = torch.zeros(3, 4)
    t[1, 2] = value
    with pytest.raises(NonFiniteError, match="the logits produced NaN or infinite"):
        check_finite(t, "the logits")


def test_check_finite_returns_a_finite_tensor() -> None:
    t = torch.tensor([[0.0, -1e30, 1e30]])
    assert check_finite(t, "the logits") is t


class Shifted(Attack):
    """A throwaway attack moving every pixel by ``3 * eps``: outside the ball.

    Args:
        eps: L-inf radius.
    """

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + 3 * self.eps).clamp(0, 1)


class Poisoned(Attack):
    """A throwaway attack returning a NaN pixel (else the clean images).

    Args:
        eps: L-inf radius.
    """

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[0, 0, 0, 0] = float("nan")
        return out


class Trimmed(Attack):
    """A throwaway attack returning one image fewer."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x[1:]


class Mutating(Attack):
    """A throwaway attack returning valid images but zeroing its input in place."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        x.zero_()
        return out


class Stepping(Attack):
    """A throwaway valid attack: every pixel moved by ``+eps``, clipped to [0,1]."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + self.eps).clamp(0, 1)


NET = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize(("cls", "message"), [
    (Shifted, "L-inf ball"), (Poisoned, "NaN or infinite"), (Trimmed, "shape"),
    (Mutating, "mutated its input"),
])
def test_calling_an_attack_refuses_what_breaks_the_contract(
        cls: type[Attack], message: str, x: torch.Tensor) -> None:
    x0 = x.clone()
    with pytest.raises(AttackValidationError, match=message):
        cls(eps=0.1)(NET, x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(x, x0), "the caller's images were changed"


def test_calling_a_valid_attack_returns_its_batch(x: torch.Tensor) -> None:
    out = Stepping(eps=0.1)(NET, x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(out, (x + 0.1).clamp(0, 1)) and not out.requires_grad


class Meddling(Attack):
    """A throwaway valid attack that does what a plugin should not: puts the model in training
    mode, unfreezes and touches its weights' gradients, reseeds and draws from torch's RNG, and
    returns float64 images."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = torch.ones_like(p)
        torch.manual_seed(123)
        noise = torch.rand(x.shape) * 2 - 1
        return (x + self.eps * noise).clamp(0, 1).double()


def test_calling_an_attack_restores_what_the_plugin_changed(x: torch.Tensor) -> None:
    """Whatever ``perturb`` does to the model and to torch's RNG, the caller finds them as they
    were (mode, frozen flags, gradients, random stream) and gets images of its own dtype: the
    contract kit therefore checks none of this per plugin."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).train()
    net[1].weight.requires_grad_(False)
    grads = [None, torch.full_like(net[1].bias, 7.0)]
    net[1].bias.grad = grads[1]
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    out = Meddling(eps=0.1)(net, x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(torch.rand(4), expected), "the caller's random stream moved"
    assert net.training and out.dtype == x.dtype
    assert [p.requires_grad for p in net.parameters()] == [False, True]
    assert net[1].weight.grad is None and net[1].bias.grad is grads[1]


@pytest.mark.parametrize("cls", [Shifted, Poisoned])
def test_the_runner_records_nothing_from_an_invalid_attack(
        cls: type[Attack], tmp_path: Path, register_plugin: Callable[..., str]) -> None:
    register_plugin(ATTACKS, "tmp-bad", cls)
    cfg = RunConfig(datasets=("digits",), defenses=("none",), attacks=("tmp-bad",), n=20,
                    eps=(0.1,), model_opts={"epochs": 1})
    store, cache = Store(tmp_path / "r.sqlite"), Cache(tmp_path / "cache")
    with pytest.raises(AttackValidationError, match="tmp-bad"):
        run_grid(cfg, store, cache)
    assert len(store.frame()) == 0
    assert not list((tmp_path / "cache").glob("adversarial/*")), "an invalid set was cached"


def test_an_empty_batch_is_valid_and_a_mismatched_empty_one_is_not() -> None:
    empty = torch.empty(0, 1, 4, 4)
    validate_adversarial(empty, empty.clone(), 0.1)
    with pytest.raises(AttackValidationError, match="shape"):
        validate_adversarial(empty, torch.empty(0, 1, 4, 3), 0.1)


def test_frozen_restores_each_submodule_s_own_mode() -> None:
    """A pipeline is built in training mode around models in eval mode: attacking through it
    must leave them in eval mode (a BatchNorm in training mode updates its statistics on the
    next forward), and restore gradients flags and the wrapper's own mode."""
    from bench.defense import Defense
    from bench.threat import Pipeline

    class Same(Defense):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    clf = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(10))
    clf(torch.rand(2, 1, 28, 28))
    clf.eval()
    pipe = Pipeline(clf, Same())
    assert pipe.training and not clf.training
    before = clf[1].running_mean.clone()
    with frozen(pipe) as m:
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        m(torch.rand(4, 1, 28, 28))
    assert pipe.training and not clf.training and not clf[1].training
    assert all(p.requires_grad for p in clf.parameters())
    clf(torch.rand(4, 1, 28, 28))  # eval: the statistics stay
    assert torch.equal(clf[1].running_mean, before)
