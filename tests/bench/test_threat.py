"""Threat models: what the attacker differentiates. ``oblivious`` and the undefended baseline
attack the bare classifier; ``whitebox`` attacks the defended pipeline through
``attack_forward`` (BPDA for a non-differentiable defense); and which rows are marked BPDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.defense import MODEL, Defense
from bench.errors import ConfigError
from bench.threat import Pipeline, Target, Threat, attacked_model, uses_bpda

SHAPE = (1, 4, 4)


class Keep(Defense):
    """A throwaway identity defense (the undefended baseline)."""

    identity = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class OpaqueKeep(Keep):
    """An identity declared non-differentiable: still nothing for BPDA to approximate."""

    differentiable = False


class Round(Defense):
    """A throwaway non-differentiable preprocessor: 5 grey levels (zero gradient almost
    everywhere; attacked through BPDA)."""

    differentiable = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 4).round() / 4


class Replace(Defense):
    """A throwaway model defense: its own linear classifier."""

    kind = MODEL

    def __init__(self, input_shape: tuple[int, ...] = SHAPE, num_classes: int = 3) -> None:
        super().__init__(input_shape, num_classes)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1))


def gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 0].sum().backward()
    return xg.grad


def test_parse_takes_the_enum_or_its_value() -> None:
    assert Threat.parse("whitebox") is Threat.WHITEBOX
    assert Threat.parse(Threat.OBLIVIOUS) is Threat.OBLIVIOUS
    with pytest.raises(ConfigError, match="'greybox'.*oblivious, whitebox"):
        Threat.parse("greybox")


@pytest.mark.parametrize("cls", [Keep, Round, Replace])
def test_oblivious_attacks_the_bare_classifier(cls: type[Defense],
                                               classifier: nn.Module) -> None:
    model, target = attacked_model(Threat.OBLIVIOUS, classifier, cls(SHAPE, 3))
    assert model is classifier and target.key == "classifier" and target.shared


def test_whitebox_on_the_undefended_baseline_attacks_the_bare_classifier(
        classifier: nn.Module) -> None:
    """The same model as under ``oblivious``, so the two threats share one adversarial set."""
    model, target = attacked_model(Threat.WHITEBOX, classifier, Keep(SHAPE, 3))
    assert model is classifier and target == Target(Threat.OBLIVIOUS) and target.shared


@pytest.mark.parametrize("cls", [Round, Replace])
def test_whitebox_attacks_the_adaptive_pipeline(cls: type[Defense],
                                                classifier: nn.Module) -> None:
    defense = cls(SHAPE, 3)
    model, target = attacked_model(Threat.WHITEBOX, classifier, defense)
    assert isinstance(model, Pipeline) and model.adaptive
    assert model.classifier is classifier and model.defense is defense
    assert target.key == f"defense:{cls.__name__.lower()}" and not target.shared
    defense.registry_name = "tmp-name"
    assert attacked_model(Threat.WHITEBOX, classifier, defense)[1].key == "defense:tmp-name"


def test_a_target_keys_its_sets_as_stored_sets_were_keyed() -> None:
    """The keys every stored adversarial set was written under: a changed spelling would
    recompute every cached set (and orphan the stored ones)."""
    keep, rnd = Keep(SHAPE, 3), Round(SHAPE, 3)
    rnd.registry_name = "round"
    assert Target.of(Threat.OBLIVIOUS, rnd).key == "classifier"
    assert Target.of(Threat.TRANSFER, keep, source="abc").key == "source:abc"
    assert Target.of(Threat.WHITEBOX, rnd).key == "defense:round"
    assert Target.of(Threat.WHITEBOX, rnd, eot=5, identity="f00").key == "defense:round:eot5:f00"
    assert Target.of(Threat.WHITEBOX, rnd, eot=1, identity="f00").key == "defense:round:f00"
    assert [Target.of(t, rnd, source="k").shared for t in Threat] == [True, False, True]
    with pytest.raises(ConfigError, match="--source-model"):
        Target.of(Threat.TRANSFER, rnd)


def test_the_pipeline_computes_the_defended_model(classifier: nn.Module,
                                                  x: torch.Tensor) -> None:
    rounding, replace = Round(SHAPE, 3), Replace(SHAPE, 3)
    for adaptive in (False, True):
        assert torch.allclose(Pipeline(classifier, rounding, adaptive)(x),
                              classifier(rounding(x)))
        assert torch.allclose(Pipeline(classifier, replace, adaptive)(x), replace(x))


def test_only_the_adaptive_pipeline_passes_gradients_through_bpda(classifier: nn.Module,
                                                                  x: torch.Tensor) -> None:
    """Rounding has zero gradient: the plain pipeline gives the attacker nothing, the adaptive
    one the classifier's gradient at the rounded images (BPDA with the identity)."""
    rounding = Round(SHAPE, 3)
    assert not gradient(Pipeline(classifier, rounding), x).any()
    adaptive = gradient(Pipeline(classifier, rounding, adaptive=True), x)
    assert torch.allclose(adaptive, gradient(classifier, rounding(x)))
    assert adaptive.abs().sum() > 0


@pytest.mark.parametrize(("threat", "cls", "gradient_free", "expected"), [
    (Threat.WHITEBOX, Round, False, True),
    (Threat.WHITEBOX, Round, True, False),  # reads no gradient: nothing is approximated
    (Threat.OBLIVIOUS, Round, False, False),
    (Threat.WHITEBOX, Replace, False, False),  # differentiable
    (Threat.WHITEBOX, OpaqueKeep, False, False),  # the identity
])
def test_uses_bpda(threat: Threat, cls: type[Defense], gradient_free: bool,
                   expected: bool) -> None:
    assert uses_bpda(threat, cls(SHAPE, 3), gradient_free) is expected
