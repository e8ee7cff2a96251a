"""The planted-example test (:mod:`bench.planted`): the suite finds the planted adversarial
example through a differentiable defense, through BPDA and through EOT; it misses it where the
gradient is zero or uninformative although the defense declares it useful, and when its attack
does nothing; and the readout really plants a point within eps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from bench.attack import Attack
from bench.defense import Defense
from bench.planted import PlantedSpec, Readout, fit_readout, plant, planted_test
from bench.registry import ATTACKS, DEFENSES
from bench.report.flags import PLANTED_MIN, PLANTED_RATE
from bench.session import Session
from bench.suite import AttackSuite, Member
from bench.threat import Pipeline

EPS = 0.2  # digits' default eps
SPEC = PlantedSpec(n=12, steps=5)


class MaskedRound(Defense):
    """Rounds to 5 grey levels but declares itself differentiable: zero gradient almost
    everywhere (test only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 4).round() / 4


class _Scramble(torch.autograd.Function):
    """Identity forward; a random gradient of the same size backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return torch.randn_like(grad) * grad.abs().mean()


class Scrambled(Defense):
    """Changes nothing but scrambles the gradient: non-zero and uninformative, so the zero-
    gradient check (ZG) cannot see it (test only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Scramble.apply(x)


class NoOp(Attack):
    """A gradient attack that returns its input (test only)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.clone()


class NoOpSuite(AttackSuite):
    """A suite whose only member does nothing (test only)."""

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 1) -> None:
        super().__init__(eps, alpha, targeted, seed)
        self.steps = steps

    def members(self) -> list[Member]:
        return [Member("noop", "test-noop")]


@pytest.fixture(scope="module")
def session() -> Session:
    return Session("digits", n=16, eot=4, model_opts={"epochs": 1})


@pytest.fixture(autouse=True)
def _registered(register_plugin: Callable[..., str]) -> None:
    register_plugin(DEFENSES, "test-masked", MaskedRound)
    register_plugin(DEFENSES, "test-scrambled", Scrambled)
    register_plugin(ATTACKS, "test-noop", NoOp)
    register_plugin(ATTACKS, "test-noop-suite", NoOpSuite)


def run(s: Session, defense: str, suite: str = "adaptive", n: int = SPEC.n) -> dict[str, Any]:
    x, _ = s.test
    attack = ATTACKS.get(suite).build(eps=EPS, seed=0, steps=SPEC.steps)
    return planted_test(s.classifier, s.defense(defense), x[torch.arange(n)], EPS,
                        attack, PlantedSpec(n=n, steps=SPEC.steps), s.eot, seed=0)


@pytest.mark.parametrize("defense", ["none", "bitdepth", "randomization"])
def test_the_suite_finds_the_planted_examples(session: Session, defense: str) -> None:
    """Own gradient, BPDA (bitdepth) and EOT (randomization, 4 draws: a few of its tasks are
    not set up, the planted point's expected class under 4 fresh draws being 0)."""
    r = run(session, defense, n=16 if defense == "randomization" else SPEC.n)
    assert r["informative"] >= PLANTED_MIN
    assert r["value"] >= PLANTED_RATE, r
    assert r["found"] == sum(r["by_member"].values()) and r["seconds"] > 0
    assert r["eot"] == (4 if defense == "randomization" else 1)
    assert ("BPDA" in r["through"]) == (defense == "bitdepth")


@pytest.mark.parametrize("defense", ["test-masked", "test-scrambled"])
def test_useless_gradients_miss_the_planted_examples(session: Session, defense: str) -> None:
    r = run(session, defense)
    assert r["informative"] >= PLANTED_MIN
    assert r["value"] < PLANTED_RATE, r


def test_an_attack_that_does_nothing_finds_no_planted_example(session: Session) -> None:
    r = run(session, "none", suite="test-noop-suite")
    assert r["informative"] >= PLANTED_MIN and r["found"] == 0
    assert r["by_member"] == {"noop": 0}


def test_the_readout_plants_a_point_within_eps(session: Session) -> None:
    d = session.defense("none")
    own = Pipeline(session.classifier, d)
    x = session.test[0][torch.arange(1)]
    task = plant((own, Pipeline(session.classifier, d, adaptive=True)), x, EPS, SPEC, 1, 3)
    assert task.status in ("ok", "trivial")
    assert float((task.planted - x).abs().max()) <= EPS + 1e-6
    assert task.predict(torch.cat([x, task.planted])).tolist() == [0, 1]
    logits = task.judge_model(torch.cat([x, task.planted]))
    assert logits.shape == (2, 10)  # padded to the classifier's classes, below both
    assert bool((logits[:, 2:] < logits[:, :2].min(1, keepdim=True).values).all())
    again = plant((own, own), x, EPS, SPEC, 1, 3)
    assert torch.equal(again.planted, task.planted)  # every draw from the seed


def test_fit_readout_separates_or_says_it_cannot() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 20, 30, generator=g)
    y = torch.zeros(20)
    y[-1] = 1
    w, b = fit_readout(z, y, 500)
    m = z[0] @ w + b
    assert m[-1] > 0 > float(m[:-1].max()) and float(m.abs().max()) <= 1 + 1e-5
    z[0, -1] = z[0, 0]  # the planted point's features equal a class-0 point's
    assert fit_readout(z, y, 100) is None


def test_readout_on_the_logits_when_no_linear_layer_is_called() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = Readout(model, None, torch.ones(3), torch.zeros(()), classes=3)
    out = head(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, 3) and not head.training


def test_spec_rejects_a_bad_budget() -> None:
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="planted steps=0"):
        PlantedSpec(steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["at-pgd", "dunet", "lgd"])
def test_trained_defenses_pass(defense: str) -> None:
    """The trained defenses on digits with their default recipes (minutes on a CPU)."""
    s = Session("digits", n=20, eot=4)
    x, _ = s.test
    spec = PlantedSpec(n=20, steps=20)
    suite = ATTACKS.get("adaptive").build(eps=EPS, seed=0, steps=spec.steps)
    r = planted_test(s.classifier, s.defense(defense), x[torch.arange(20)], EPS, suite, spec,
                     s.eot, seed=0)
    assert r["informative"] >= PLANTED_MIN and r["value"] >= PLANTED_RATE, r
