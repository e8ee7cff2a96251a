"""Contract tests parametrized over every registered defense: a new plugin is covered with no new
test code. Training budgets are shrunk only through generic constructor options (``epochs``,
``batch_size``...) when a plugin accepts them, and a tiny dataset."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from bench.cache import Cache
from bench.data import Digits
from bench.defense import MODEL, PREPROCESSOR, Defense, FitContext, fit_or_load
from bench.registry import DEFENSES
from tests.conftest import TinyNet

SHAPE = (1, 28, 28)
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
