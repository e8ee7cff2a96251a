"""Threat models: what the attacker differentiates through, and what is evaluated.

* ``oblivious``: the attack sees the undefended classifier only and ignores the defense (what
  the HGD and autoencoder papers call white-box or grey-box). Its adversarial examples do not
  depend on the defense, so they are computed once per (attack, classifier, data slice) and
  reused for every defense.
* ``whitebox``: adaptive; the attack differentiates through the whole defended pipeline, with
  BPDA through non-differentiable steps (each defense's ``attack_forward``).

The evaluated model is always the defended pipeline (:meth:`bench.session.Session.evaluate`).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn

from bench.defense import MODEL, Defense
from bench.errors import ConfigError


class Threat(str, Enum):
    OBLIVIOUS = "oblivious"
    WHITEBOX = "whitebox"

    @classmethod
    def parse(cls, value: str | Threat) -> Threat:
        """Accept the enum or its string value."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ConfigError(f"Unknown threat model {value!r}: use one of {names}.") from None


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


def attacked_model(threat: Threat, classifier: nn.Module,
                   defense: Defense) -> tuple[nn.Module, str]:
    """The model the attack differentiates, and a key naming it for reuse of adversarial sets.

    Two threats that attack the same model share the key (e.g. the undefended baseline under
    ``oblivious`` and ``whitebox``), so their adversarial examples are computed once.
    """
    if threat is Threat.OBLIVIOUS or defense.identity:
        return classifier, "classifier"
    name = getattr(defense, "registry_name", type(defense).__name__)
    return Pipeline(classifier, defense, adaptive=True), f"defense:{name}"


def uses_bpda(threat: Threat, defense: Defense, gradient_free: bool = False) -> bool:
    """Whether the attack's gradients pass through a BPDA approximation (never for an attack
    that reads no gradients)."""
    return (threat is Threat.WHITEBOX and not defense.differentiable and not defense.identity
            and not gradient_free)
