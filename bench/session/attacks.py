"""The attacks of a session: each registered attack built once per eps with the run's options,
step size, target mode and seed."""

from __future__ import annotations

from bench.attack import Attack
from bench.config import RunConfig
from bench.options import scoped
from bench.registry import ATTACKS


class SessionAttacks:
    """Attacks built from the registry with ``cfg``'s attack options, ``alpha``, ``targeted``
    and seed, once per (name, eps)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.attack_opts = cfg.attack_opts
        self.alpha, self.targeted, self.seed = cfg.alpha, cfg.targeted, cfg.seed
        self._built: dict[tuple[str, float], Attack] = {}

    def attack(self, name: str, eps: float) -> Attack:
        """Attack ``name`` at ``eps`` with the session's options, step size and target mode,
        built once."""
        if (name, eps) not in self._built:
            entry = ATTACKS.get(name)
            common = {"alpha": self.alpha, "targeted": self.targeted}
            opts = scoped(self.attack_opts, name, entry.builder)
            self._built[(name, eps)] = entry.build(eps=eps, seed=self.seed,
                                                   **{**common, **opts})
        return self._built[(name, eps)]
