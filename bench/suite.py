"""Attack suites: several attacks run in order, each only on the images still correct, as one
registered attack (``--attack adaptive``).

A suite is an :class:`~bench.attack.Attack` whose :meth:`AttackSuite.members` lists the attacks
it runs (registered attack names with their options, and the threat model each one uses). On
a bare model, calling it like any attack runs every member that needs nothing but that model,
in order, on the survivors of the previous ones, and returns for each image the first
adversarial example that fooled the model (or the last member's). In a grid, a suite cell runs
through :func:`bench.cells.evaluate_suite`: each member under its own threat model (whitebox
through the defense with BPDA where the defense declares one and EOT where it is randomized,
transfer from the source model, ...), every candidate judged by the defended pipeline itself
(several draws for a randomized defense), and each image records which member broke it first.
An image counts as robust only when it is correct clean and under every member (AutoAttack's
convention).

Attacks must be defense-specific (Tramer et al., NeurIPS 2020): a defense lists its own attacks
in ``Defense.adaptive_attacks`` (registered attack names), and every suite runs them first, on
that defense only.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.attack import Attack
from bench.errors import ConfigError
from bench.registry import ATTACKS
from bench.threat import Threat

if TYPE_CHECKING:
    from bench.defense import Defense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One attack of a suite: a label shown in the breakdown, a registered attack name, the
    options it is built with (besides eps and seed) and the threat model it runs under."""

    label: str
    attack: str
    options: dict[str, Any] = field(default_factory=dict)
    threat: Threat = Threat.WHITEBOX

    def describe(self, attack: Attack) -> dict[str, Any]:
        return {"label": self.label, "attack": self.attack, "threat": Threat(self.threat).value,
                "params": attack.describe()}


class AttackSuite(Attack):
    """Base class of an attack suite (see the module docstring). Subclasses implement
    :meth:`members`; the suite's own options are its members' budgets."""

    #: EOT draws of the members through a randomized defense (None: the run's ``--eot``).
    eot: int | None = None

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(eps, alpha, targeted, seed)
        if alpha is not None or targeted is not None:
            raise ConfigError(f"{type(self).__name__} is a suite: its members choose their own "
                              f"steps and targets; drop --alpha and --targeted.")
        self._built: dict[tuple[str, str], Attack] = {}

    @abstractmethod
    def members(self) -> list[Member]:
        """The suite's attacks, in the order they run."""

    def plan(self, defense: Defense | None = None) -> list[Member]:
        """The members run on ``defense``: its own ``adaptive_attacks`` first, then
        :meth:`members`."""
        own = [Member(name, name) for name in getattr(defense, "adaptive_attacks", ())]
        plan = own + self.members()
        labels = [m.label for m in plan]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{self.name}: two members share a label in {labels}; give the "
                              f"defense's own attack another name.")
        return plan

    def member(self, m: Member) -> Attack:
        """The attack of member ``m``, built once with the suite's eps and seed."""
        key = (m.label, m.attack)
        if key not in self._built:
            attack = ATTACKS.get(m.attack).build(eps=self.eps, seed=self.seed, **m.options)
            if isinstance(attack, AttackSuite):
                raise ConfigError(f"{self.name}: member {m.label!r} is itself a suite.")
            self._built[key] = attack
        return self._built[key]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(),
                "members": [m.describe(self.member(m)) for m in self.members()]}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every member that needs only ``model`` (whitebox), each on the images it has not
        fooled yet; an image keeps the first adversarial example that fooled it."""
        x_adv, alive = x.clone(), torch.ones(len(y), dtype=torch.bool, device=y.device)
        for m in self.plan():
            if m.threat != Threat.WHITEBOX or not alive.any():
                continue
            idx = alive.nonzero().flatten()
            attack = self.member(m)
            cand = attack(model, x[idx], y[idx], seed=int(torch.randint(0, 2**31 - 1, (1,))))
            with torch.no_grad():
                fooled = model(cand).argmax(1) != y[idx]
            x_adv[idx] = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), cand, x_adv[idx])
            alive[idx[fooled]] = False
        return x_adv
