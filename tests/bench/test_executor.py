"""Executors: the Ray executor's store equals the local one's, cell by cell and per sample, also
when a worker is killed in the middle of a group (Ray retries it; no cell lost or duplicated)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cache import Cache
from bench.config import EXECUTORS, RunConfig
from bench.errors import ConfigError
from bench.executors import BY_NAME, LocalExecutor, executor_for, run_grid
from bench.executors.ray_executor import import_ray, shipped_plugins
from bench.store import Store
from tests.bench import composite_defense
from tests.bench.randomized_defense import NAME as NOISY
from tests.bench.randomized_defense import registration

# What differs between two runs of the same cell whatever computes it: when and how long.
TIMING = ("wall_time", "created_at")
TIMING_KEYS = ("seconds", "wall")


def grid(executor: str = "local") -> RunConfig:
    """A grid with a trained defense (dae: its classifier, surrogate and HGD training set), a
    randomized one and a composite of the trained one (plugins registered by this process, not
    built-ins: the composite's part is fitted once, by its own Ray task) and a plain one."""
    return RunConfig(datasets=("digits",),
                     defenses=("bitdepth", "dae", NOISY, composite_defense.NAME),
                     attacks=("fgsm", "pgd10"), n=60, model_opts={"epochs": 1},
                     defense_opts={"dae.epochs": 1}, eval_draws=3, executor=executor,
                     ray_cpus=1)


def untimed(obj: Any) -> Any:
    """``obj`` (stored metadata) without its timings."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items()
                if not any(t in k for t in TIMING_KEYS)}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def cells(db: Path) -> dict[str, dict[str, Any]]:
    """config hash -> the stored row, timings left out (per-sample flags as bytes)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out: dict[str, dict[str, Any]] = {}
    for r in con.execute("SELECT * FROM results"):
        row = {k: r[k] for k in r.keys() if k not in TIMING}
        row["metadata"] = untimed(json.loads(row["metadata"]))
        assert row["config_hash"] not in out
        out[row["config_hash"]] = row
    count = con.execute("SELECT count(*), count(DISTINCT config_hash) FROM results").fetchone()
    assert count[0] == count[1] == len(out)
    return out


def run(cfg: RunConfig, db: Path, cache: Path) -> list[str]:
    return run_grid(cfg, Store(db), Cache(cache))


@pytest.fixture(scope="module")
def noisy() -> Iterator[str]:
    """The test plugins registered for this module's tests (the registry restored after)."""
    with composite_defense.registration(), registration() as name:
        yield name


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory, noisy: str) -> tuple[Path, list[str]]:
    """The grid run by the local executor, at one torch thread (a Ray task's share here: CPU
    reductions depend on the thread count, which every row records)."""
    base = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hashes = run(grid(), base / "local.sqlite", base / "cache")
    finally:
        torch.set_num_threads(threads)
    return base / "local.sqlite", hashes


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray") if not os.environ.get("CI") else import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_executor_is_chosen_by_the_config() -> None:
    assert isinstance(executor_for(grid()), LocalExecutor)
    assert executor_for(grid("ray")).name == "ray"
    assert set(BY_NAME) == set(EXECUTORS)  # every name the config accepts has its executor
    with pytest.raises(ConfigError, match=r"--executor .dask. \(or \$BENCH_EXECUTOR\): use one"):
        RunConfig(executor="dask")
    with pytest.raises(ConfigError, match="--ray-cpus 0 must be a positive number"):
        RunConfig(ray_cpus=0)


def test_bench_executor_sets_the_executor_unless_the_command_line_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_EXECUTOR", "ray")
    assert RunConfig.resolve({}).executor == "ray"
    assert RunConfig.resolve({"executor": "local"}).executor == "local"
    monkeypatch.delenv("BENCH_EXECUTOR")
    assert RunConfig.resolve({}).executor == "local"


def test_ray_missing_is_one_line_saying_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"needs Ray: pip install -e '\.\[ray\]'"):
        import_ray()


def test_a_scripts_own_plugins_are_shipped_to_workers(noisy: str) -> None:
    from bench.registry import REGISTRIES

    shipped = shipped_plugins()
    assert noisy in [e.name for e in shipped["defenses"]]
    for kind, entries in shipped.items():  # never a built-in: the workers import those
        builtin = REGISTRIES[kind].builtin.split(".")[0]
        assert all(e.module.split(".")[0] != builtin for e in entries), kind
    assert "none" not in [e.name for e in shipped["defenses"]]


@pytest.mark.slow
def test_ray_store_equals_local_cell_by_cell(tmp_path: Path, local_store: tuple[Path, list[str]],
                                             ray_instance: Any) -> None:
    db, hashes = local_store
    got = run(grid("ray"), tmp_path / "ray.sqlite", tmp_path / "cache")
    assert got == hashes
    want, have = cells(db), cells(tmp_path / "ray.sqlite")
    assert len(want) == 5 * 2 * 2  # (baseline + 4 defenses) x attacks x threats
    assert sorted(have) == sorted(want)
    for h in want:
        assert have[h] == want[h], f"cell {h} ({want[h]['defense']} {want[h]['attack']})"
    # Resuming on Ray stores nothing new and leaves every cell as it was.
    assert run(grid("ray"), tmp_path / "ray.sqlite", tmp_path / "cache") == hashes
    assert cells(tmp_path / "ray.sqlite") == have


def _tasks(title: str) -> list[int]:
    """PIDs of this machine's processes whose title is ``title`` (Ray names a worker after the
    task it runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if cmd.strip() == title:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
def test_killed_worker_is_retried_and_no_cell_is_lost_or_duplicated(
        tmp_path: Path, local_store: tuple[Path, list[str]], ray_instance: Any) -> None:
    db, hashes = local_store
    # The classifier, the surrogate and the HGD training set are cached (as by a previous
    # night); the defense weights and the adversarial sets are not, so the groups take long
    # enough to be killed in the middle.
    cache = tmp_path / "cache"
    shutil.copytree(db.parent / "cache", cache)
    for kind in ("defenses", "hgd-nets", "adversarial"):
        shutil.rmtree(cache / kind, ignore_errors=True)
    killed: list[int] = []
    stop = threading.Event()

    def kill_one() -> None:
        while not stop.is_set() and not killed:
            for pid in _tasks("ray::bench_cells"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        got = run(grid("ray"), tmp_path / "ray.sqlite", cache)
    finally:
        stop.set()
        killer.join()
    assert killed, "no group task was seen running: the kill never happened"
    assert got == hashes
    assert cells(tmp_path / "ray.sqlite") == cells(db)


def test_shared_fits_are_the_trainable_parts_of_the_grids_composites() -> None:
    """What the Ray executor fits once before the groups that would each fit it."""
    from bench.session import Session

    s = Session("digits", n=20, model_opts={"epochs": 1})
    composite = "ensemble"  # HGD Appendix C: an LGD per classifier
    parts = [p for p in s.parts(composite).defenses if s.built(p).needs_training]
    assert parts, "the ensemble's LGDs train"
    fits = s.defenses.shared_fits([composite, "lgd", "bitdepth", "ensemble-shared"])
    assert len(fits) == len(set(fits)) and set(parts) <= set(fits)
    assert all(s.built(p).needs_training for p in fits)
    assert s.defenses.shared_fits(["lgd", "bitdepth", "none"]) == []  # no composite: nothing shared
