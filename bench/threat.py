"""Threat models: what the attacker differentiates through, and what is evaluated.

* ``oblivious``: the attack sees the undefended classifier only and ignores the defense (what
  the HGD and autoencoder papers call white-box or grey-box). Its adversarial examples do not
  depend on the defense, so they are computed once per (attack, classifier, data slice) and
  reused for every defense.
* ``whitebox``: adaptive; the attack differentiates through the whole defended pipeline, with
  BPDA through non-differentiable steps (each defense's ``attack_forward``) and Expectation over
  Transformation (:class:`EOT`) through a randomized defense.
* ``transfer``: the attack is crafted on a *source* model other than the target (the dataset's
  second model by default, ``--source-model``) with no knowledge of the defense (Liao et al.'s
  Table 4 setting; Papernot et al.'s black-box transfer). Like oblivious sets, transfer sets are
  computed once per (attack, source, slice) and reused for every defense.

The evaluated model is always the defended pipeline (:mod:`bench.session.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from bench.defense import MODEL, Defense
from bench.errors import ConfigError
from bench.registry import registered_name


class Threat(str, Enum):
    OBLIVIOUS = "oblivious"
    WHITEBOX = "whitebox"
    TRANSFER = "transfer"

    @classmethod
    def parse(cls, value: str | Threat) -> Threat:
        """Accept the enum or its string value."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ConfigError(f"Unknown threat model {value!r}: use one of {names}.") from None


#: What ``run`` crosses when ``--threat`` is not given (transfer needs a second model: asked for).
DEFAULT_THREATS = (Threat.OBLIVIOUS, Threat.WHITEBOX)


class Pipeline(nn.Module):
    """``classifier(defense(x))`` for a preprocessor; the defense itself for a model defense.

    Args:
        adaptive: route the defense through ``attack_forward`` (BPDA where it declares one).
    """

    def __init__(self, classifier: nn.Module, defense: Defense, adaptive: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.defense = defense
        self.adaptive = adaptive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.defense.kind == MODEL:
            return self.defense.attack_forward(x) if self.adaptive else self.defense(x)
        x_hat = self.defense.attack_forward(x) if self.adaptive else self.defense(x)
        return self.classifier(x_hat)


class EOT(nn.Module):
    """Expectation over Transformation (Athalye, Carlini and Wagner, ICML 2018, sec. 4.3) of a
    randomized model: ``log E_t[softmax(model_t(x))]`` estimated with ``draws`` independent
    forward passes (each draws the defense's randomness from torch's global RNG).

    An attack that ascends a loss of these log-probabilities attacks the expected prediction; its
    input gradient, ``sum_t grad p_t / sum_t p_t`` for the cross-entropy, is the gradient of the
    average over draws of the probabilities (the gradient estimate of EOT for the expected
    classifier; one forward and backward pass per draw, as AutoAttack's ``eot_iter``). The
    output is a valid logit vector (softmax gives the averaged probabilities), so every attack
    and loss (cross-entropy, DLR, margin) takes it unchanged.

    Args:
        model: the randomized pipeline, images N x C x H x W in [0,1] -> logits N x K.
        draws: forward passes averaged per call (>= 1).
    """

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        if int(draws) != draws or draws < 1:
            raise ConfigError(f"eot={draws!r}: use a positive number of draws, e.g. --eot 20.")
        self.model = model
        self.draws = int(draws)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(torch.softmax(self.model(x).float(), dim=1) for _ in range(self.draws))
        return torch.log((probs / self.draws).clamp_min(1e-30))


def eot_draws(threat: Threat, defense: Defense, draws: int, gradient_free: bool = False) -> int:
    """How many draws an attack of ``threat`` averages over: ``draws`` for a gradient attack
    through a randomized defense under whitebox, else 1 (no EOT)."""
    if threat is Threat.WHITEBOX and defense.randomized and not defense.identity \
            and not gradient_free:
        return int(draws)
    return 1


@dataclass(frozen=True)
class Target:
    """What an attack differentiates through: the classifier alone, the transfer source model,
    or a defended pipeline (with its EOT draws and its identity). A key, never a string to
    parse: :attr:`key` names it in an adversarial set's identity, :attr:`shared` says whether one
    set serves every defense.

    Build it with :meth:`of`. Two threats that attack the same model get the same target (the
    undefended baseline under ``oblivious`` and ``whitebox``), so their set is computed once.

    Attributes:
        threat: the threat model whose set this is (``oblivious`` for the classifier alone).
        source: the transfer source's weight key (``transfer`` only).
        defense: the defense's registered name (a defended pipeline only).
        eot: EOT draws around the pipeline (1: none).
        identity: a hash of the defense's identity (parameters and weights), when known.
    """

    threat: Threat
    source: str | None = None
    defense: str | None = None
    eot: int = 1
    identity: str | None = None

    @classmethod
    def of(cls, threat: Threat, defense: Defense, eot: int = 1, source: str | None = None,
           identity: str | None = None) -> Target:
        """The target of an attack under ``threat`` on ``defense``.

        Args:
            eot: draws of :class:`EOT` around the defended pipeline (whitebox; 1 = none), as
                given by :func:`eot_draws`.
            source: the transfer source's weight key (needed for ``transfer``).
            identity: the defense's identity hash, named in a whitebox target's key.
        """
        if threat is Threat.TRANSFER:
            if source is None:
                raise ConfigError("The transfer threat needs a source model: pass --source-model "
                                  "NAME (a model of the dataset other than the target).")
            return cls(Threat.TRANSFER, source=source)
        if threat is Threat.OBLIVIOUS or defense.identity:
            return cls(Threat.OBLIVIOUS)
        return cls(Threat.WHITEBOX, defense=registered_name(defense), eot=int(eot),
                   identity=identity)

    @property
    def shared(self) -> bool:
        """Whether no defense is part of this target, so one adversarial set (cached on disk,
        computed once by an executor) serves the cells of every defense."""
        return self.defense is None

    @property
    def key(self) -> str:
        """The target's name in an adversarial set's identity (the strings stored sets were
        keyed by: ``classifier``, ``source:KEY``, ``defense:NAME[:eotN][:IDENTITY]``)."""
        if self.threat is Threat.TRANSFER:
            return f"source:{self.source}"
        if self.defense is None:
            return "classifier"
        return (f"defense:{self.defense}" + (f":eot{self.eot}" if self.eot > 1 else "")
                + (f":{self.identity}" if self.identity else ""))

    def model(self, classifier: nn.Module, defense: Defense | None = None,
              source: nn.Module | None = None) -> nn.Module:
        """The model the attack differentiates: ``source`` (transfer), ``classifier`` (no
        defense in the target), else the defended pipeline through BPDA where declared,
        wrapped in :class:`EOT` when ``eot`` > 1."""
        if self.threat is Threat.TRANSFER:
            if source is None:
                raise ValueError("a transfer target needs its source model")
            return source
        if self.defense is None:
            return classifier
        if defense is None:
            raise ValueError(f"target {self.key} needs its defense")
        model: nn.Module = Pipeline(classifier, defense, adaptive=True)
        return EOT(model, self.eot) if self.eot > 1 else model


def attacked_model(threat: Threat, classifier: nn.Module, defense: Defense,
                   source: tuple[nn.Module, str] | None = None,
                   eot: int = 1) -> tuple[nn.Module, Target]:
    """The model an attack under ``threat`` differentiates, and its :class:`Target`.

    Args:
        source: ``(model, weight key)`` of the transfer source (needed for ``transfer``).
        eot: draws of :class:`EOT` around the defended pipeline (whitebox; 1 = none).
    """
    target = Target.of(threat, defense, eot, source[1] if source is not None else None)
    return target.model(classifier, defense, source[0] if source is not None else None), target


def uses_bpda(threat: Threat, defense: Defense, gradient_free: bool = False) -> bool:
    """Whether the attack's gradients pass through a BPDA approximation (never for an attack
    that reads no gradients)."""
    return (threat is Threat.WHITEBOX and not defense.differentiable and not defense.identity
            and not gradient_free)
