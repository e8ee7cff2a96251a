"""Contract tests parametrized over every registered defense: a new plugin is covered with no new
test code. Training budgets are shrunk only through generic constructor options (``epochs``,
``batch_size``...) when a plugin accepts them, and a tiny dataset.

The whitebox tests check that an adaptive attacker really differentiates through each defense
(not the bare classifier), with a throwaway defense through the runner too, so that a harness
attacking the undefended classifier under ``whitebox`` fails fast tests, not only slow ones."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bench.accel import precision_scope, to_memory_format
from bench.cache import Cache
from bench.config import RunConfig
from bench.data import Digits
from bench.defense import MODEL, PREPROCESSOR, Defense, FitContext, fit_or_load, split_spec
from bench.executors import run_grid
from bench.plan import Planner
from bench.registry import ATTACKS, DEFENSES, Entry
from bench.session import Session
from bench.store import Store
from bench.threat import Pipeline, Threat, attacked_model
from tests.conftest import TinyNet

SHAPE = (1, 28, 28)
MODELS = ("target", "other")  # a composite's models: the classifier, the surrogate
SMALL = {"epochs": 1, "batch_size": 32, "steps": 2, "attack_steps": 2}


class TinyDigits(Digits):
    """The embedded digits with a training budget of 48 images."""

    fit_images = 48


def small_options(name: str) -> dict[str, Any]:
    builder = DEFENSES.get(name).builder
    params = inspect.signature(builder).parameters
    return {k: v for k, v in SMALL.items() if k in params}


def build(name: str) -> Defense:
    torch.manual_seed(0)
    return DEFENSES.build(name, input_shape=SHAPE, num_classes=10, **small_options(name))


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> FitContext:
    torch.manual_seed(0)
    cache = Cache(tmp_path_factory.mktemp("defense-cache"))
    return FitContext(TinyDigits(), TinyNet().eval(), [TinyNet().eval()], torch.device("cpu"),
                      cache, seed=0, key={"test": "contract"})


@pytest.fixture(scope="module")
def fitted(context: FitContext) -> dict[str, Defense]:
    out = {}
    for name in DEFENSES.names():
        if DEFENSES.get(name).builder.unsupported(SHAPE):
            continue
        d = build(name)
        fit_or_load(d, context)
        out[name] = d.eval()
    for d in out.values():  # a composite gets its parts as the harness would hand them over
        parts = d.parts(MODELS)
        if parts.defenses or parts.models:
            d.compose([out[split_spec(p)[0]] for p in parts.defenses],
                      [context.classifier if m == MODELS[0] else context.surrogates[0]
                       for m in parts.models])
    return out


NAMES = DEFENSES.names()


@pytest.mark.parametrize("name", NAMES)
def test_declares_the_contract(name: str) -> None:
    entry = DEFENSES.get(name)
    cls = entry.builder
    assert isinstance(cls, type) and issubclass(cls, Defense)
    assert cls.kind in (PREPROCESSOR, MODEL)
    assert isinstance(cls.differentiable, bool) and isinstance(cls.randomized, bool)
    assert entry.description, f"{name} needs a docstring whose first line describes it"
    doc = inspect.getdoc(inspect.getmodule(cls)) or ""
    assert "python -m bench" in doc + (inspect.getdoc(cls) or ""), "a CLI example is missing"


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_range_and_no_mutation(name: str, fitted: dict[str, Defense],
                                             batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    if name not in fitted:
        pytest.skip(f"{name} does not support {SHAPE}")
    d, (x, _) = fitted[name], batch
    x0 = x.clone()
    with torch.no_grad():
        out = d(x)
    assert torch.equal(x, x0), "the defense mutated its input"
    assert torch.isfinite(out).all()
    if d.kind == PREPROCESSOR:
        assert out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1
    else:
        assert out.shape == (len(x), 10)


@pytest.mark.parametrize("name", NAMES)
def test_whitebox_gradient_exists_and_forward_unchanged(
        name: str, fitted: dict[str, Defense], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    if name not in fitted:
        pytest.skip(f"{name} does not support {SHAPE}")
    d, (x, _) = fitted[name], batch
    torch.manual_seed(1)
    with torch.no_grad():
        plain = d(x)
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(1)
    out = d.attack_forward(xg)
    if not d.randomized:
        assert torch.allclose(out.detach(), plain, atol=1e-5), "BPDA changed the forward result"
    out.float().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert xg.grad.abs().sum() > 0, "no gradient reaches the input under the whitebox threat"


@pytest.mark.parametrize("name", NAMES)
def test_runs_channels_last_and_under_bf16_autocast(
        name: str, fitted: dict[str, Defense], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The GPU paths every defense meets: channels-last weights and inputs give the same output
    (``--channels-last``), and a bf16 attack differentiates it (``--attack-precision bf16``)."""
    if name not in fitted:
        pytest.skip(f"{name} does not support {SHAPE}")
    d, (x, _) = fitted[name], batch
    cl = to_memory_format(copy.deepcopy(d), True)
    with torch.no_grad():
        torch.manual_seed(1)
        plain = d(x)
        torch.manual_seed(1)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    if not d.randomized:
        assert torch.allclose(out, plain, atol=1e-4), "channels-last changed the output"
    xg = x.clone().requires_grad_(True)
    with precision_scope(torch.device("cpu"), "bf16"):
        adv = d.attack_forward(xg)
    adv.float().sum().backward()
    assert xg.grad is not None and xg.grad.dtype == torch.float32
    assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_trained_weights_are_cached_and_reloaded(name: str, fitted: dict[str, Defense],
                                                 context: FitContext,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if name not in fitted or not fitted[name].needs_training:
        pytest.skip(f"{name} has nothing to train here")
    again = build(name)
    monkeypatch.setattr(type(again), "fit", lambda self, ctx: pytest.fail("retrained"))
    fit_or_load(again, context)
    for (k, a), b in zip(fitted[name].state_dict().items(), again.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k


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
def test_whitebox_gradient_goes_through_the_defense(
        name: str, fitted: dict[str, Defense], context: FitContext,
        batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Under ``whitebox`` the attacker's input gradient is that of the defended pipeline (through
    ``attack_forward``: BPDA where declared), never the bare classifier's, except for the
    identity defense, whose attacked model is the classifier itself."""
    if name not in fitted:
        pytest.skip(f"{name} does not support {SHAPE}")
    d, classifier, (x, y) = fitted[name], context.classifier, batch
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
def flip(monkeypatch: pytest.MonkeyPatch) -> str:
    """:class:`Flip` registered under ``FLIP`` for one test."""
    DEFENSES.load()
    monkeypatch.setitem(DEFENSES._entries, FLIP, Entry(FLIP, Flip, description="mirror"))
    return FLIP


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
