"""``bench run --dry-run``: the checks and the plan of a run, and nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import RunConfig
from bench.dry_run import dry_run
from bench.errors import ConfigError
from bench.executors import run_grid
from bench.store import open_store


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_a_dry_run_plans_the_run_s_cells_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    store = tmp_path / "results" / "bench.sqlite"
    args = ["run", "--defense", "lgd,bitdepth", "--attack", "fgsm,pgd10", "--eps", "0.1,0.2",
            "--n", "20", "--results", str(store)]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("24 cells: 0 stored")  # 3 rows x 2 attacks x 2 eps x 2 threats
    assert not store.parent.exists()
    assert not cache.exists() or files_under(cache) == []  # nothing trained or cached
    planned = {line.split()[2] for line in out[:-1]}
    cfg = RunConfig(defenses=("bitdepth",), attacks=("fgsm",), eps=(0.1,), n=20,
                    results=str(store))
    hashes = run_grid(cfg, open_store(store))
    assert set(hashes) <= planned  # the run stores its cells under the planned hashes
    assert main([*args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    stored = {line.split()[2] for line in lines if line.endswith(" stored")}
    assert stored == set(hashes)
    assert lines[-1].startswith(f"24 cells: {len(hashes)} stored")


def test_a_dry_run_checks_what_a_run_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--defense", "lgdd", "--attack", "fgsm", "--dry-run"]) == 2
    assert "Unknown defense 'lgdd'. Did you mean 'lgd'" in capsys.readouterr().err
    assert main(["run", "--attack", "fgsm", "--defense-opt", "jpeg.qualty=5", "--defense",
                 "jpeg", "--dry-run"]) == 2
    assert "Did you mean 'quality'" in capsys.readouterr().err


def test_a_dry_run_cannot_plan_an_automatic_batch_size() -> None:
    with pytest.raises(ConfigError, match="cannot plan --batch-size auto"):
        dry_run(RunConfig(attacks=("fgsm",), batch_size="auto",
                          results=os.devnull + ".sqlite"))
