"""The executor contract: an executor drives a run (plan the grid, evaluate the groups still to
run, store their rows) and decides only where and when a group is computed, never what it
computes: every executor gives the same store, cell by cell and per sample."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from bench.cache import Cache
from bench.config import RunConfig
from bench.plan import Group, Planner
from bench.session import Session
from bench.store import CellResult, Store


class Executor(ABC):
    """Runs a :class:`RunConfig` grid into a store (only this process writes it).

    Subclasses implement :meth:`evaluate` (and may override :meth:`probe`, where
    ``--batch-size auto`` is measured).

    Args:
        cfg: the grid.
        cache: the weight and tensor cache (default: ``$BENCH_CACHE_DIR``).
    """

    name: str = ""

    def __init__(self, cfg: RunConfig, cache: Cache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or Cache()

    def run(self, store: Store) -> list[str]:
        """Plan the grid, evaluate every cell not yet stored and store its row as it comes;
        return the hashes of all cells of the grid."""
        planner = Planner(self.cfg, self.cache)
        hashes, groups = planner.groups(planner.sessions(self.probe), store.done)
        for result in self.evaluate(planner, groups):
            store.add(result)
        return hashes

    def probe(self, session: Session, defenses: list[str]) -> dict[str, Any]:
        """``--batch-size auto`` for ``session``'s grid of ``defenses``, probed here."""
        return session.resolve_batch_size(defenses)

    @abstractmethod
    def evaluate(self, planner: Planner, groups: list[Group]) -> Iterator[CellResult]:
        """The rows of every cell of ``groups``, as each is computed."""
