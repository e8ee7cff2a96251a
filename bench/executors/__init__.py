"""Executors: how a grid's groups of cells run (see :mod:`bench.executors.base`).

``local`` (:mod:`~bench.executors.local`) runs the groups one after another in this process;
``ray`` (:mod:`~bench.executors.ray_executor`) runs them as Ray tasks on a local instance or a
cluster. :func:`run_grid` is the one entry point: it picks the executor the configuration names.
"""

from __future__ import annotations

from bench.cache import Cache
from bench.config import RunConfig
from bench.executors.base import Executor
from bench.executors.local import LocalExecutor
from bench.executors.ray_executor import RayExecutor
from bench.plugin_files import load_plugins
from bench.store import Store

BY_NAME: dict[str, type[Executor]] = {e.name: e for e in (LocalExecutor, RayExecutor)}


def executor_for(cfg: RunConfig, cache: Cache | None = None) -> Executor:
    """The executor ``cfg.executor`` names."""
    return BY_NAME[cfg.executor](cfg, cache)


def run_grid(cfg: RunConfig, store: Store, cache: Cache | None = None) -> list[str]:
    """Run every cell of ``cfg``'s grid not yet in ``store`` through the executor the
    configuration names; return the hashes of all cells of the grid. The plugin files the
    configuration names (``cfg.plugins``) are imported first."""
    load_plugins(cfg.plugins)
    return executor_for(cfg, cache).run(store)


__all__ = ["BY_NAME", "Executor", "LocalExecutor", "RayExecutor", "executor_for", "run_grid"]
