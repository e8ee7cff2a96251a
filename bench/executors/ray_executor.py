"""The Ray executor: a grid's groups as Ray tasks on a local instance or a cluster
(``--ray-address ADDR`` or ``$RAY_ADDRESS``); the driver alone writes the store:

* **Preparation tasks** first, per (dataset, model) session: one trains (or loads) the classifier
  and every other model the grid needs (the transfer source, the guides and parts of its
  defenses); then one task per adversarial set that does not depend on a defense (oblivious sets,
  crafted on the classifier, and transfer sets, crafted on the source) computes it once, and one
  task per trainable part of the grid's composite defenses fits it once
  (:meth:`~bench.session.defenses.SessionDefenses.shared_fits`).
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
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from bench.cache import Cache
from bench.cells import Provenance, evaluate_group
from bench.config import RunConfig, data_root
from bench.errors import BenchError, ConfigError
from bench.executors.base import Executor
from bench.plan import Group, Planner
from bench.plugin_files import PACKAGE as PLUGIN_FILES
from bench.registry import REGISTRIES
from bench.session import Session
from bench.store import CellResult
from bench.threat import Threat

log = logging.getLogger(__name__)
RAY_RETRIES = 3  # a group task whose worker died is run again this many times


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
    out = {}
    for kind, reg in REGISTRIES.items():
        reg.load()
        base = reg.builtin or ""
        out[kind] = [e for e in reg.entries() if ":" not in e.name and not (
            base and (e.module == base or e.module.startswith(base + ".")))]
        for e in out[kind]:  # a plugin file's module cannot be imported by name on a worker
            if e.module.startswith(PLUGIN_FILES + ".") and e.module in sys.modules:
                import_ray().cloudpickle.register_pickle_by_value(sys.modules[e.module])
    return out


def _adopt(plugins: dict[str, list[Any]]) -> None:
    for kind, entries in plugins.items():
        REGISTRIES[kind].adopt(entries)


def _worker_planner(cfg: RunConfig, cache_root: str, threads: int,
                    plugins: dict[str, list[Any]]) -> Planner:
    """A planner inside a task, set to the task's CPU share (before ``versions()`` records the
    thread count)."""
    torch.set_num_threads(threads)
    _adopt(plugins)
    return Planner(cfg, Cache(cache_root))


def _session(planner: Planner, dataset: str, model: str, batches: dict[str, Any]) -> Session:
    """The task's session; ``batches``: each session's ``--batch-size auto`` as the driver
    resolved it (by ``dataset/model``), so that a worker plans the driver's cells."""
    return planner.session(dataset, model, batch_auto=batches.get(f"{dataset}/{model}"))


def probe_batch(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                batches: dict[str, Any], dataset: str, model: str,
                defenses: list[str]) -> dict[str, Any]:
    """Task: ``--batch-size auto`` of a session, probed on a worker (a GPU one when the cluster
    has GPUs: the hardware the cells run on, not the driver's)."""
    s = _session(_worker_planner(cfg, cache_root, threads, plugins), dataset, model, batches)
    return s.resolve_batch_size(defenses)


def prepare_models(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                   batches: dict[str, Any], dataset: str, model: str, others: list[str],
                   source: bool) -> float:
    """Task: train (or load) the session's classifier, the models in ``others`` and, with
    ``source``, the transfer source, into the shared cache; return the wall time."""
    t0 = time.perf_counter()
    s = _session(_worker_planner(cfg, cache_root, threads, plugins), dataset, model, batches)
    s.classifier  # noqa: B018 - trains and caches
    for m in others:
        s.model_named(m)
    if source:
        s.source  # noqa: B018
    return time.perf_counter() - t0


def prepare_defense(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                    batches: dict[str, Any], dataset: str, model: str, defense: str,
                    *after: Any) -> float:
    """Task: fit (or load) defense ``defense`` into the shared cache; return the wall time."""
    t0 = time.perf_counter()
    s = _session(_worker_planner(cfg, cache_root, threads, plugins), dataset, model, batches)
    s.defense(defense)
    return time.perf_counter() - t0


def prepare_set(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                batches: dict[str, Any], dataset: str, model: str, attack: str, eps: float,
                threat: str, *after: Any) -> float:
    """Task: compute one adversarial set that no defense is part of (oblivious or transfer) into
    the shared cache; return the wall time. ``after``: the preparation it waits for."""
    t0 = time.perf_counter()
    s = _session(_worker_planner(cfg, cache_root, threads, plugins), dataset, model, batches)
    s.sets.shared(s.attack(attack, eps), Threat(threat))
    return time.perf_counter() - t0


def group_task(cfg: RunConfig, cache_root: str, threads: int, plugins: dict[str, list[Any]],
                   batches: dict[str, Any], dataset: str, model: str, defense: str,
                   hashes: list[str], *after: Any) -> list[CellResult]:
    """Task: the results of cells ``hashes`` of ``defense``, planned again here and checked to
    be the driver's (a worker with other code or data plans other cells: an error, never a
    mislabelled result)."""
    planner = _worker_planner(cfg, cache_root, threads, plugins)
    s = _session(planner, dataset, model, batches)
    planned = {c.hash: c for c in planner.plan(s, defense)}
    missing = [h for h in hashes if h not in planned]
    if missing:
        raise BenchError(f"A Ray worker planned other cells for {dataset}/{model}/{defense} than "
                         f"the driver ({len(missing)} of {len(hashes)} hashes differ): install "
                         f"the same bench version and give every node the same data root and "
                         f"cache.")
    return list(evaluate_group(s, defense, [planned[h] for h in hashes], Provenance()))


class RayExecutor(Executor):
    """Groups as Ray tasks (see the module's docstring); this process writes the store."""

    name = "ray"

    def _setup(self, batches: dict[str, Any]) -> tuple[Any, tuple[Any, ...],
                                                                       dict[str, Any]]:
        """Ray, the arguments every task starts with, and the tasks' options."""
        ray = connect(self.cfg.ray_address)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        threads = self.cfg.ray_cpus
        # Workers resolve paths as the driver does, on every node (a shared data root and cache).
        cfg = dataclasses.replace(self.cfg, data_root=str(data_root(self.cfg.data_root)))
        common = (cfg, str(self.cache.root.resolve()), threads, shipped_plugins(), batches)
        opts = {"num_cpus": threads, "num_gpus": gpus, "max_retries": RAY_RETRIES,
                "retry_exceptions": False}
        return ray, common, opts

    def probe(self, session: Session, defenses: list[str]) -> dict[str, Any]:
        """``--batch-size auto`` for ``session``, probed by a task on a worker like those that
        will run its cells (one GPU when the cluster has any)."""
        ray, common, opts = self._setup({})
        task = ray.remote(probe_batch).options(name="bench_probe_batch", **opts)
        return ray.get(task.remote(*common, session.info.name, session.model_name,
                                   list(defenses)))

    def evaluate(self, planner: Planner, groups: list[Group]) -> Iterator[CellResult]:
        if not groups:
            return
        batches = {f"{g.session.info.name}/{g.session.model_name}": g.session.batch_auto
                   for g in groups if g.session.batch_auto is not None}
        ray, common, opts = self._setup(batches)
        threads, gpus = opts["num_cpus"], opts["num_gpus"]
        models_task = ray.remote(prepare_models).options(name="bench_prepare_models", **opts)
        set_task = ray.remote(prepare_set).options(name="bench_prepare_set", **opts)
        fit_task = ray.remote(prepare_defense).options(name="bench_prepare_defense", **opts)
        cells_task = ray.remote(group_task).options(name="bench_cells", **opts)

        sessions: dict[tuple[str, str], list[Group]] = {}
        for g in groups:
            sessions.setdefault((g.session.info.name, g.session.model_name), []).append(g)
        pending: dict[Any, Group] = {}
        for (ds, model), gs in sessions.items():
            s = gs[0].session
            others = sorted({m for g in gs for m in s.defenses.models_of(g.defense)} - {model})
            shared = {(a.name, a.eps, t.value) for g in gs for a, t in g.shared_sets()}
            source = any(t == Threat.TRANSFER.value for *_, t in shared) or any(
                "source" in c.config for g in gs for c in g.cells)
            ready = models_task.remote(*common, ds, model, others, source)
            sets = [set_task.remote(*common, ds, model, a, e, t, ready)
                    for a, e, t in sorted(shared)]
            fits = {p: fit_task.remote(*common, ds, model, p, ready)
                    for p in s.defenses.shared_fits([g.defense for g in gs])}
            for g in gs:
                needs = [fits[p] for p in dict.fromkeys([*s.parts(g.defense).defenses,
                                                         g.defense]) if p in fits]
                ref = cells_task.remote(*common, ds, model, g.defense,
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
