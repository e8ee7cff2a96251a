"""Executors: how a grid's groups of cells run. They change where and when a cell is computed,
never what it computes: every executor gives the same store, cell by cell and per sample.

``local`` runs the groups one after another in this process. ``ray`` runs them as Ray tasks on a
local instance or a cluster (``--ray-address ADDR`` or ``$RAY_ADDRESS``):

* **Preparation tasks** first, per (dataset, model) session: one trains (or loads) the classifier
  and every other model the grid needs (the transfer source, the guides and parts of its
  defenses); then one task per adversarial set that does not depend on a defense (oblivious sets,
  crafted on the classifier, and transfer sets, crafted on the source) computes it once, and one
  task per trainable part of the grid's composite defenses fits it once (:func:`shared_fits`).
* **Group tasks**, one per (dataset, model, defense): fit the defense (or load its weights) and
  evaluate its cells, reading the shared sets back. They wait for their session's preparation.
* **Sharing** goes through the shared cache directory (``$BENCH_CACHE_DIR``, on a filesystem every
  node mounts), not Ray's object store: the sets are the size of the evaluated slice (54 GB in
  float32 for ImageNet val), outlive one driver (tomorrow's grid reuses them), and the cache
  already validates every set it reads back against the clean slice and writes atomically, so a
  worker killed mid-write leaves no half file.
* **Only the driver writes the store.** A task returns its cells' results; the driver stores each
  group as it completes, so an interrupted driver resumes like the local executor.
* **A killed worker** is retried by Ray (``max_retries``); its group then runs again from the
  start, and no cell is lost or stored twice (a cell's hash is the store's primary key, and only a
  completed task's results are stored).
* **Threads:** each task asks for ``--ray-cpus`` CPUs (and one GPU when the cluster has any) and
  sets torch's thread count to that share: two torch processes with default threads on a 2-core
  machine ran the same PGD loop about 3x slower than one.

Plugins registered outside the built-in packages (a researcher's own defense registered in the
driver's script) are shipped to the workers with the tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from bench.config import RunConfig, data_root
from bench.errors import BenchError, ConfigError

if TYPE_CHECKING:
    from bench.runner import Group, Runner
    from bench.store import CellResult

log = logging.getLogger(__name__)
RAY_RETRIES = 3  # a group task whose worker died is run again this many times


class LocalExecutor:
    """The groups one after another in this process."""

    name = "local"

    def batch_size(self, runner: Runner, session: Any, defenses: list[str]) -> dict[str, Any]:
        """``--batch-size auto`` for ``session``'s grid of ``defenses``, probed here."""
        return session.resolve_batch_size(defenses)

    def run(self, runner: Runner, groups: list[Group]) -> Iterator[CellResult]:
        for g in groups:
            yield from runner.evaluate(g.session, g.defense, g.cells)


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install "
                          "'ray>=2.9'), or use --executor local.") from None
    return ray


def connect(address: str | None = None) -> Any:
    """Ray, initialized once per process: the cluster at ``address`` (else ``$RAY_ADDRESS``),
    else a new local instance with this machine's CPUs; an instance this process already
    started (e.g. ``ray.init(num_cpus=2)`` in a test) is reused."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None,
                     include_dashboard=False, log_to_driver=True)
        except ConnectionError as exc:
            raise ConfigError(f"Cannot join the Ray cluster at {address or '$RAY_ADDRESS'} "
                              f"({exc}); start it with 'ray start --head' or check "
                              f"--ray-address.") from None
    return ray


def shipped_plugins() -> dict[str, list[Any]]:
    """Registry kind -> the entries registered outside the built-in packages (a script's own
    plugins, which a worker would not have imported)."""
    from bench.registry import REGISTRIES

    out = {}
    for kind, reg in REGISTRIES.items():
        reg.load()
        base = (reg.builtin or "").split(".")[0]
        out[kind] = [e for e in reg.entries()
                     if not (base and e.module.split(".")[0] == base) and ":" not in e.name]
    return out


def _adopt(plugins: dict[str, list[Any]]) -> None:
    from bench.registry import REGISTRIES

    for kind, entries in plugins.items():
        REGISTRIES[kind].adopt(entries)


def _worker_runner(cfg: RunConfig, cache_root: str, threads: int,
                   plugins: dict[str, list[Any]]) -> Runner:
    """A runner inside a task, set to the task's CPU share (before ``versions()`` records the
    thread count)."""
    from bench.cache import Cache
    from bench.runner import Runner

    torch.set_num_threads(threads)
    _adopt(plugins)
    return Runner(cfg, store=None, cache=Cache(cache_root))  # type: ignore[arg-type]


def _session(runner: Runner, dataset: str, model: str, batches: dict[str, Any]) -> Any:
    """The task's session; ``batches``: each session's ``--batch-size auto`` as the driver
    resolved it (by ``dataset/model``), so that a worker plans the driver's cells."""
    from bench.session import Session

    return Session.for_config(runner.cfg, dataset, model, cache=runner.cache,
                              batch_auto=batches.get(f"{dataset}/{model}"))


def probe_batch(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                batches: dict[str, Any], dataset: str, model: str,
                defenses: list[str]) -> dict[str, Any]:
    """Task: ``--batch-size auto`` of a session, probed on a worker (a GPU one when the cluster
    has GPUs: the hardware the cells run on, not the driver's)."""
    s = _session(_worker_runner(cfg, cache_root, threads, plugins), dataset, model, batches)
    return s.resolve_batch_size(defenses)


def prepare_models(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                   batches: dict[str, Any], dataset: str, model: str, others: list[str],
                   source: bool) -> float:
    """Task: train (or load) the session's classifier, the models in ``others`` and, with
    ``source``, the transfer source, into the shared cache; return the wall time."""
    t0 = time.perf_counter()
    s = _session(_worker_runner(cfg, cache_root, threads, plugins), dataset, model, batches)
    s.classifier  # noqa: B018 - trains and caches
    for m in others:
        s.model_named(m)
    if source:
        s.source  # noqa: B018
    return time.perf_counter() - t0


def shared_fits(session: Any, defenses: list[str]) -> list[str]:
    """The trainable parts of the composite defenses among ``defenses`` (canonical ``NAME`` or
    ``NAME@MODEL``, each once): fitted by one task before the groups that use them, which would
    otherwise each fit them (an ensemble's LGDs, and the grid's own ``lgd`` group)."""
    out: list[str] = []
    for name in defenses:
        for part in session.parts(name).defenses:
            if part not in out and session.built(part).needs_training:
                out.append(part)
    return out


def prepare_defense(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                    batches: dict[str, Any], dataset: str, model: str, defense: str,
                    *after: Any) -> float:
    """Task: fit (or load) defense ``defense`` into the shared cache; return the wall time."""
    t0 = time.perf_counter()
    s = _session(_worker_runner(cfg, cache_root, threads, plugins), dataset, model, batches)
    s.defense(defense)
    return time.perf_counter() - t0


def prepare_set(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                batches: dict[str, Any], dataset: str, model: str, attack: str, eps: float,
                threat: str, *after: Any) -> float:
    """Task: compute one adversarial set that no defense is part of (oblivious or transfer) into
    the shared cache; return the wall time. ``after``: the preparation it waits for."""
    from bench.threat import Threat

    t0 = time.perf_counter()
    s = _session(_worker_runner(cfg, cache_root, threads, plugins), dataset, model, batches)
    s.shared_adversarial(s.attack(attack, eps), Threat(threat))
    return time.perf_counter() - t0


def evaluate_group(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                   batches: dict[str, Any], dataset: str, model: str, defense: str,
                   hashes: list[str], *after: Any) -> list[CellResult]:
    """Task: the results of cells ``hashes`` of ``defense``, planned again here and checked to
    be the driver's (a worker with other code or data plans other cells: an error, never a
    mislabelled result)."""
    runner = _worker_runner(cfg, cache_root, threads, plugins)
    s = _session(runner, dataset, model, batches)
    planned = {c.hash: c for c in runner.plan(s, defense)}
    missing = [h for h in hashes if h not in planned]
    if missing:
        raise BenchError(f"A Ray worker planned other cells for {dataset}/{model}/{defense} than "
                         f"the driver ({len(missing)} of {len(hashes)} hashes differ): install "
                         f"the same bench version and give every node the same data root and "
                         f"cache.")
    return list(runner.evaluate(s, defense, [planned[h] for h in hashes]))


class RayExecutor:
    """Groups as Ray tasks (see the module's docstring); this process writes the store."""

    name = "ray"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def _setup(self, runner: Runner, batches: dict[str, Any]) -> tuple[Any, tuple[Any, ...],
                                                                       dict[str, Any]]:
        """Ray, the arguments every task starts with, and the tasks' options."""
        ray = connect(self.cfg.ray_address)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        threads = self.cfg.ray_cpus
        # Workers resolve paths as the driver does, on every node (a shared data root and cache).
        cfg = dataclasses.replace(self.cfg, data_root=str(data_root(self.cfg.data_root)))
        common = (cfg, str(runner.cache.root.resolve()), threads, shipped_plugins(), batches)
        opts = {"num_cpus": threads, "num_gpus": gpus, "max_retries": RAY_RETRIES,
                "retry_exceptions": False}
        return ray, common, opts

    def batch_size(self, runner: Runner, session: Any, defenses: list[str]) -> dict[str, Any]:
        """``--batch-size auto`` for ``session``, probed by a task on a worker like those that
        will run its cells (one GPU when the cluster has any)."""
        ray, common, opts = self._setup(runner, {})
        task = ray.remote(probe_batch).options(name="bench_probe_batch", **opts)
        return ray.get(task.remote(*common, session.info.name, session.model_name,
                                   list(defenses)))

    def run(self, runner: Runner, groups: list[Group]) -> Iterator[CellResult]:
        if not groups:
            return
        from bench.threat import Threat

        batches = {f"{g.session.info.name}/{g.session.model_name}": g.session.batch_auto
                   for g in groups if g.session.batch_auto is not None}
        ray, common, opts = self._setup(runner, batches)
        threads, gpus = opts["num_cpus"], opts["num_gpus"]
        models_task = ray.remote(prepare_models).options(name="bench_prepare_models", **opts)
        set_task = ray.remote(prepare_set).options(name="bench_prepare_set", **opts)
        fit_task = ray.remote(prepare_defense).options(name="bench_prepare_defense", **opts)
        group_task = ray.remote(evaluate_group).options(name="bench_cells", **opts)

        sessions: dict[tuple[str, str], list[Group]] = {}
        for g in groups:
            sessions.setdefault((g.session.info.name, g.session.model_name), []).append(g)
        pending: dict[Any, Group] = {}
        for (ds, model), gs in sessions.items():
            s = gs[0].session
            others = sorted({m for g in gs for m in s.models_of(g.defense)} - {model})
            shared = {(c.attack.name, c.eps, t.value) for g in gs for c in g.cells
                      if (t := s.shared_threat(c.attack, c.threat, g.defense)) is not None}
            source = any(t == Threat.TRANSFER.value for *_, t in shared) or any(
                "source" in c.config for g in gs for c in g.cells)
            ready = models_task.remote(*common, ds, model, others, source)
            sets = [set_task.remote(*common, ds, model, a, e, t, ready)
                    for a, e, t in sorted(shared)]
            fits = {p: fit_task.remote(*common, ds, model, p, ready)
                    for p in shared_fits(s, [g.defense for g in gs])}
            for g in gs:
                needs = [fits[p] for p in dict.fromkeys([*s.parts(g.defense).defenses,
                                                         g.defense]) if p in fits]
                ref = group_task.remote(*common, ds, model, g.defense,
                                        [c.hash for c in g.cells], ready, *sets, *needs)
                pending[ref] = g
        log.info("ray: %d groups in %d sessions on %s (%d CPU per task%s)", len(pending),
                 len(sessions), getattr(ray.get_runtime_context(), "gcs_address", "ray"),
                 threads, ", 1 GPU" if gpus else "")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            g = pending.pop(done[0])
            try:
                results = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BenchError):
                    raise type(cause)(str(cause)) from None
                raise
            except ray.exceptions.RayError as exc:  # the worker or node died every try
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise BenchError(
                    f"Ray lost the task of {g.session.info.name}/{g.session.model_name}/"
                    f"{g.defense} {RAY_RETRIES + 1} times ({type(exc).__name__}: {first}); the "
                    f"cells stored so far are kept: rerun the same command to resume, and see "
                    f"the workers' logs (python-core-worker-*.log).") from None
            log.info("ray: %s/%s/%s done (%d cells)", g.session.info.name,
                     g.session.model_name, g.defense, len(results))
            yield from results


def executor_for(cfg: RunConfig) -> LocalExecutor | RayExecutor:
    """The executor ``cfg.executor`` names."""
    return RayExecutor(cfg) if cfg.executor == "ray" else LocalExecutor()
