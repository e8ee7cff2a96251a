"""Attack suites: several attacks run in order, each only on the images still correct, as one
registered attack (``--attack adaptive``).

A suite is an :class:`~bench.attack.Attack` whose :meth:`AttackSuite.members` lists the attacks
it runs (registered attack names with their options, and the threat model each one uses). On
a bare model, calling it like any attack runs every member that needs nothing but that model,
in order, on the survivors of the previous ones, and returns for each image the first
adversarial example that fooled the model (or the last member's). In a grid, the runner runs it
through :func:`evaluate_suite`: each member under its own threat model (whitebox through the
defense with BPDA where the defense declares one and EOT where it is randomized, transfer from
the source model, ...), every candidate judged by the defended pipeline itself (several draws for
a randomized defense), and each image records which member broke it first. An image counts as
robust only when it is correct clean and under every member (AutoAttack's convention).

Attacks must be defense-specific (Tramer et al., NeurIPS 2020): a defense lists its own attacks
in ``Defense.adaptive_attacks`` (registered attack names), and every suite runs them first, on
that defense only.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.attack import Attack
from bench.errors import ConfigError
from bench.stream import Images, take
from bench.threat import Threat, attacked_model, eot_draws, uses_bpda

if TYPE_CHECKING:
    from bench.defense import Defense
    from bench.session import Session

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
            from bench.registry import ATTACKS

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


@dataclass
class SuiteResult:
    """What a suite cell records: per-image robustness (correct clean and under every member)
    and which member broke each image first (``first_break``: 0 = wrong clean, k = member k,
    1-based, None = survived), with the members' descriptions and counts."""

    robust: torch.Tensor
    first_break: list[int | None]
    members: list[dict[str, Any]]


def evaluate_suite(s: Session, suite: AttackSuite, defense: Defense, clean: torch.Tensor,
                   seed: int, eot: int) -> SuiteResult:
    """Run ``suite`` on ``defense`` in session ``s`` from the clean correctness ``clean`` (bool,
    N): each member attacks only the images still correct, under its own threat model, and the
    defended pipeline judges each candidate (:meth:`~bench.session.Session.evaluate`, seeded
    from ``seed``). ``eot``: draws of a whitebox gradient member through a randomized defense.
    """
    from bench.session import derive_seed

    x, y = s.test
    alive = clean.clone()
    first: list[int | None] = [None if ok else 0 for ok in clean.tolist()]
    described = []
    for k, m in enumerate(suite.plan(defense), start=1):
        attack, t0 = suite.member(m), time.perf_counter()
        idx = alive.nonzero().flatten()
        draws = eot_draws(Threat(m.threat), defense, eot, attack.gradient_free)
        if len(idx):
            cand = _candidates(s, m, attack, defense, idx, draws, seed)
            ok, _ = s.evaluate(defense, cand, derive_seed(seed, m.label, "judge"), index=idx)
            broken = idx[~ok]
            alive[broken] = False
            for i in broken.tolist():
                first[i] = k
        else:
            broken = idx
        described.append({**m.describe(attack), "eot": draws,
                          "gradient_free": attack.gradient_free,
                          "bpda": uses_bpda(Threat(m.threat), defense, attack.gradient_free),
                          "attacked": len(idx), "broken": len(broken),
                          "wall_time": time.perf_counter() - t0})
        log.info("%s %s: %d of %d images broken", suite.name, m.label, len(broken), len(idx))
    return SuiteResult(alive, first, described)


def _candidates(s: Session, m: Member, attack: Attack, defense: Defense, idx: torch.Tensor,
                draws: int, seed: int) -> Images:
    """Member ``m``'s adversarial images for the slice's images at ``idx``: crafted on the
    survivors through the defense (whitebox), or taken from the set shared by every defense
    (oblivious, transfer: computed once for the whole slice and cached)."""
    from bench.session import derive_seed

    threat = Threat(m.threat)
    if threat is not Threat.WHITEBOX:
        source = s.source if threat is Threat.TRANSFER else None
        target, key = attacked_model(threat, s.classifier, defense, source=source)
        return take(s.adversarial(attack, target, key), idx)
    target, _ = attacked_model(threat, s.classifier, defense, eot=draws)
    x, y = s.test
    return s.craft(attack, target, take(x, idx), y[idx],
                   lambda i: derive_seed(seed, m.label, i))
