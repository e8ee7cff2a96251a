"""The local executor: the groups one after another in this process."""

from __future__ import annotations

from collections.abc import Iterator

from bench.cells import Provenance, evaluate_group
from bench.executors.base import Executor
from bench.plan import Group, Planner
from bench.store import CellResult


class LocalExecutor(Executor):
    """The groups one after another in this process."""

    name = "local"

    def evaluate(self, planner: Planner, groups: list[Group]) -> Iterator[CellResult]:
        made = Provenance()
        for g in groups:
            yield from evaluate_group(g.session, g.defense, g.cells, made)
