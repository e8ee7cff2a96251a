"""No folder of a user's can shadow the built-in plugins: run from a folder that holds its own
``defenses/`` and ``attacks/`` packages, ``python -m bench`` still lists every built-in and runs
them (they install as ``bench.defenses`` and ``bench.attacks``, see setup.py). When they were the
top-level packages ``defenses`` and ``attacks``, such a folder's empty packages were imported
instead and ``list attacks`` printed "No attacks match". Weight keys still record the former
module paths, so the cells of stores written before keep their hashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.registry import ATTACKS, DEFENSES, Registry, recorded_module


@pytest.fixture
def shadowing_folder(tmp_path: Path) -> Path:
    """A working folder holding empty packages ``defenses`` and ``attacks``."""
    work = tmp_path / "work"
    for name in ("defenses", "attacks"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text("")
    return work


def bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` run in ``cwd``, with a private cache beside it."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(cwd.parent / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def builtin_names(registry: Registry) -> set[str]:
    """The names the shipped plugin package registers (not a test's or a third party's)."""
    return {e.name for e in registry.entries()
            if e.module.startswith(f"{registry.builtin}.") and ":" not in e.name}


@pytest.mark.parametrize("registry", [DEFENSES, ATTACKS], ids=["defenses", "attacks"])
def test_a_folder_named_like_a_plugin_package_does_not_hide_the_built_ins(
        registry: Registry, shadowing_folder: Path) -> None:
    expected = builtin_names(registry)
    assert len(expected) > 5, expected  # the shipped plugins are loaded in this process
    proc = bench(["list", f"{registry.kind}s"], shadowing_folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert expected <= listed, sorted(expected - listed)


@pytest.mark.slow
def test_a_run_beside_folders_named_like_the_plugin_packages(shadowing_folder: Path) -> None:
    results = shadowing_folder.parent / "r.sqlite"
    proc = bench(["run", "--defense", "none", "--attack", "fgsm", "--n", "20", "--dataset",
                  "digits", "--results", str(results)], shadowing_folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert any("fgsm" in r for r in rows), proc.stdout
    assert results.exists()


def test_a_built_in_defense_keys_its_weights_under_its_former_module_path() -> None:
    lgd = DEFENSES.build("lgd", input_shape=(1, 28, 28), num_classes=10)
    assert type(lgd).__module__ == "bench.defenses.hgd.hgd"
    assert lgd.cache_key()["class"] == "defenses.hgd.hgd.HGD"  # as before the move
    assert recorded_module("bench.attacks.pgd") == "attacks.pgd"
    assert recorded_module("bench.defenses") == "defenses"
    for unchanged in ("bench.defense", "bench.defenses_extra.x", "bench_blur", "tests.bench.x"):
        assert recorded_module(unchanged) == unchanged
