"""The defense contract over every registered defense: the contract kit's checks
(:mod:`bench.testing`, also ``python -m bench check``), collected here, so that a new plugin is
covered with no new test code; then what only the harness decides.

The whitebox tests check that an adaptive attacker really differentiates through each defense
(not the bare classifier), with a throwaway defense through the runner too, so that a harness
attacking the undefended classifier under ``whitebox`` fails fast tests, not only slow ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bench.cache import Cache
from bench.config import RunConfig
from bench.defense import MODEL, Defense
from bench.executors import run_grid
from bench.plan import Planner
from bench.registry import ATTACKS, DEFENSES
from bench.session import Session
from bench.store import Store
from bench.testing import CheckSkipped, DefenseBench, registered
from bench.testing.test_plugins import test_defense_contract  # noqa: F401 - collected here
from bench.threat import Pipeline, Threat, attacked_model
from tests.conftest import TinyNet

SHAPE = (1, 28, 28)
NAMES = DEFENSES.names()


def input_gradient(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, with torch's RNG seeded first (a randomized defense draws the same
    randomness in every computation that is compared)."""
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y), xg)
    return grad


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two gradients differ by more than 1% of their size (not float noise)."""
    return float((a - b).norm()) > 0.01 * float(b.norm())


@pytest.mark.parametrize("name", NAMES)
def test_whitebox_gradient_goes_through_the_defense(name: str,
                                                    defense_bench: DefenseBench) -> None:
    """Under ``whitebox`` the attacker's input gradient is that of the defended pipeline (through
    ``attack_forward``: BPDA where declared), never the bare classifier's, except for the
    identity defense, whose attacked model is the classifier itself."""
    try:
        shape = defense_bench.shape(name)
    except CheckSkipped as exc:
        pytest.skip(str(exc))
    d, (x, y) = defense_bench.fitted(name), defense_bench.probe(name)
    classifier = defense_bench.context(shape).classifier
    model, _ = attacked_model(Threat.WHITEBOX, classifier, d)
    if d.identity:
        assert model is classifier
        return
    white, bare = input_gradient(model, x, y), input_gradient(classifier, x, y)
    if d.kind == MODEL:
        expected = input_gradient(d.attack_forward, x, y)
    else:
        expected = input_gradient(lambda t: classifier(d.attack_forward(t)), x, y)
    assert torch.allclose(white, expected, rtol=1e-4, atol=1e-7)
    assert differ(white, bare), f"the whitebox gradient of {name} is the bare classifier's"


FLIP = "tmp-flip"


class Flip(Defense):
    """A throwaway differentiable preprocessor (registered by the tests only): each image
    mirrored left to right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


@pytest.fixture
def flip() -> Iterator[str]:
    """:class:`Flip` registered under ``FLIP`` for one test."""
    with registered(DEFENSES, FLIP, Flip, description="mirror") as name:
        yield name


def test_whitebox_gradient_of_a_tiny_defense(flip: str,
                                             batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """d/dx CE(c(flip x)) = flip(grad CE(c) at flip x): the chain rule, through the harness."""
    torch.manual_seed(0)
    classifier, (x, y) = TinyNet().eval(), batch
    defense = DEFENSES.build(flip, input_shape=SHAPE, num_classes=10).eval()
    model, key = attacked_model(Threat.WHITEBOX, classifier, defense)
    white = input_gradient(model, x, y)
    expected = input_gradient(classifier, x.flip(-1), y).flip(-1)
    assert torch.allclose(white, expected, rtol=1e-4, atol=1e-7)
    assert differ(white, input_gradient(classifier, x, y))
    assert key != attacked_model(Threat.OBLIVIOUS, classifier, defense)[1]


def test_the_runner_attacks_the_defended_pipeline_under_whitebox(
        flip: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's whitebox cell holds the outcome of FGSM computed through the defense, its
    oblivious cell that of FGSM on the bare classifier, and the two differ."""
    sessions: list[Session] = []
    checked = Planner.sessions

    def spy(self: Planner, *args: Any) -> list[Session]:
        sessions.extend(checked(self, *args))
        return sessions

    monkeypatch.setattr(Planner, "sessions", spy)
    cfg = RunConfig(datasets=("digits",), defenses=(flip,), attacks=("fgsm",),
                    threats=("oblivious", "whitebox"), n=40, eps=(0.2,),
                    model_opts={"epochs": 1})
    store = Store(tmp_path / "r.sqlite")
    run_grid(cfg, store, Cache(tmp_path / "cache"))

    (s,) = sessions
    classifier, defense = s.classifier, s.defense(flip)
    x, y = (t.to(s.device) for t in s.test)
    fgsm = ATTACKS.build("fgsm", eps=0.2)

    def defended_correct(x_adv: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (classifier(defense(x_adv)).argmax(1) == y).cpu().numpy()

    white = defended_correct(fgsm(Pipeline(classifier, defense, adaptive=True), x, y))
    oblivious = defended_correct(fgsm(classifier, x, y))
    clean = defended_correct(x)  # robust = correct clean and under attack
    assert ((white & clean) != (oblivious & clean)).any(), "the check cannot tell them apart"
    rows = store.frame().query("defense == @flip").set_index("threat")["robust_correct"]
    assert (rows["whitebox"] == (white & clean)).all()
    assert (rows["oblivious"] == (oblivious & clean)).all()
