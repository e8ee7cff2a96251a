"""The runner: cells keyed by config hash, resume after a kill, no cell lost or duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cache import Cache
from bench.config import RunConfig
from bench.runner import Runner
from bench.store import Store

REPO = Path(__file__).resolve().parents[2]
EPS = ["0.1", "0.2", "0.3"]


def count(db: Path) -> tuple[int, int]:
    if not db.exists():
        return (0, 0)
    try:
        con = sqlite3.connect(db, timeout=30)
        return con.execute("SELECT count(*), count(DISTINCT config_hash) FROM results").fetchone()
    except sqlite3.OperationalError:  # table not created yet
        return (0, 0)


def grid_command(db: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "-q", "run", "--dataset", "digits", "--defense", "none",
            "--attack", "pgd40,ifgsm8", "--eps", ",".join(EPS), "--threat", "oblivious,whitebox",
            "--n", "100", "--results", str(db)]


def test_kill_midway_then_resume_completes_grid(tmp_path: Path) -> None:
    db = tmp_path / "grid.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(grid_command(db), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while count(db)[0] < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first, _ = count(db)
    expected = 2 * len(EPS) * 2  # attacks x eps x threats
    assert 0 < first < expected, f"kill landed outside the grid ({first} of {expected} cells)"
    done = subprocess.run(grid_command(db), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert count(db) == (expected, expected)


def test_rerun_is_noop_and_baseline_threats_share_examples(tmp_path: Path) -> None:
    cfg = RunConfig(datasets=("digits",), defenses=("none",), attacks=("fgsm",), n=30,
                    eps=(0.2,))
    store = Store(tmp_path / "r.sqlite")
    hashes = Runner(cfg, store, Cache()).run()
    df = store.frame()
    assert len(hashes) == 2 and len(df) == 2
    assert set(df["threat"]) == {"oblivious", "whitebox"}
    # the undefended model is the same target under both threats: identical outcomes
    a, b = df["robust_correct"]
    assert (a == b).all()
    before = store.frame()["created_at"].tolist()
    assert Runner(cfg, store, Cache()).run() == hashes
    assert store.frame()["created_at"].tolist() == before


def test_row_holds_the_design_fields(tmp_path: Path) -> None:
    cfg = RunConfig(datasets=("digits",), defenses=("none",), attacks=("noise",), n=25,
                    eps=(0.1,), threats=("oblivious",), seed=3)
    store = Store(tmp_path / "r.sqlite")
    Runner(cfg, store, Cache()).run()
    row = store.frame().iloc[0]
    assert row["n"] == 25 and len(row["robust_correct"]) == 25
    assert row["seed"] == 3 and row["eps"] == pytest.approx(0.1)
    assert row["versions"]["torch"] and row["git_rev"] and row["device"] == "cpu"
    assert row["config"]["attack"] == "noise" and row["wall_time"] > 0
    assert 0 <= row["robust_acc"] <= row["clean_acc"] + 0.2


def _non_differentiable_preprocessor() -> str:
    from bench.registry import DEFENSES

    for entry in DEFENSES.entries():
        cls = entry.builder
        if (getattr(cls, "kind", None) == "preprocessor" and not getattr(cls, "differentiable", 1)
                and not getattr(cls, "needs_training", True)):
            return entry.name
    pytest.skip("no training-free non-differentiable preprocessor is registered")


def test_bpda_is_recorded_for_whitebox_rows_only_and_marked(tmp_path: Path) -> None:
    from bench.report import render

    name = _non_differentiable_preprocessor()
    cfg = RunConfig(datasets=("digits",), defenses=(name,), attacks=("fgsm",), n=20,
                    eps=(0.2,), model_opts={"epochs": 1})
    store = Store(tmp_path / "r.sqlite")
    Runner(cfg, store, Cache()).run()
    df = store.frame()
    bpda = {(r.defense, r.threat): r.bpda for r in df.itertuples()}
    assert bpda[(name, "whitebox")] is True and bpda[(name, "oblivious")] is False
    assert not any(v for (d, _), v in bpda.items() if d != name)  # the baseline never
    table = render(df, "md", baseline="none")
    row = next(line for line in table.splitlines() if line.startswith(f"| digits | cnn | {name} "))
    cells = row.split("|")
    header = next(line for line in table.splitlines() if "fgsm/whitebox" in line).split("|")
    assert cells[header.index(" fgsm/whitebox@0.2 ")].strip().endswith("†")
    assert not cells[header.index(" fgsm/oblivious@0.2 ")].strip().endswith("†")


def test_gradient_free_attacks_never_record_bpda() -> None:
    from bench.registry import DEFENSES
    from bench.threat import Threat, uses_bpda

    name = _non_differentiable_preprocessor()
    defense = DEFENSES.build(name, input_shape=(1, 28, 28), num_classes=10)
    assert uses_bpda(Threat.WHITEBOX, defense)
    assert not uses_bpda(Threat.WHITEBOX, defense, gradient_free=True)
    assert not uses_bpda(Threat.OBLIVIOUS, defense)
