"""The runner: cells keyed by config hash, resume after a kill, no cell lost or duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench.attack import Attack
from bench.cache import Cache
from bench.config import RunConfig
from bench.executors import run_grid
from bench.plan import Planner
from bench.registry import DEFENSES
from bench.session.adversarial import AdversarialSets
from bench.store import Store
from bench.threat import Target
from tests.bench.randomized_defense import NAME, NoisyDefense

REPO = Path(__file__).resolve().parents[2]
EPS = ["0.1", "0.2"]
NOISY = NAME


def count(db: Path) -> tuple[int, int]:
    if not db.exists():
        return (0, 0)
    try:
        con = sqlite3.connect(db, timeout=30)
        return con.execute("SELECT count(*), count(DISTINCT config_hash) FROM results").fetchone()
    except sqlite3.OperationalError:  # table not created yet
        return (0, 0)


def grid_command(db: Path) -> list[str]:
    """A grid with a randomized defense, run through the CLI in a fresh process."""
    return [sys.executable, "-m", "tests.bench.randomized_defense", "-q", "run", "--dataset",
            "digits", "--defense", f"none,{NOISY}", "--attack", "fgsm,pgd10", "--eps",
            ",".join(EPS), "--threat", "oblivious,whitebox", "--n", "60", "--model-opt",
            "epochs=1", "--results", str(db)]


def per_sample(db: Path) -> dict[str, tuple[bytes, bytes]]:
    """config hash -> (clean, robust) per-sample correctness, as stored."""
    con = sqlite3.connect(db, timeout=30)
    rows = con.execute("SELECT config_hash, clean_correct, robust_correct FROM results")
    return {h: (bytes(c), bytes(r)) for h, c, r in rows.fetchall()}


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_CACHE_DIR": str(cache)}


@pytest.mark.slow
def test_kill_midway_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Cell by cell, per-sample flags included (a randomized defense among them): a grid killed
    midway and resumed stores exactly what an uninterrupted run stores."""
    expected = 2 * 2 * len(EPS) * 2  # defenses x attacks x eps x threats
    whole = tmp_path / "whole.sqlite"
    done = subprocess.run(grid_command(whole), cwd=tmp_path, env=_env(tmp_path / "c1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    db = tmp_path / "grid.sqlite"
    env = _env(tmp_path / "c2")
    proc = subprocess.Popen(grid_command(db), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while count(db)[0] < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first, _ = count(db)
    assert 0 < first < expected, f"kill landed outside the grid ({first} of {expected} cells)"
    resumed = subprocess.run(grid_command(db), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert count(db) == (expected, expected)
    assert per_sample(db) == per_sample(whole)
    # a cell of the randomized defense run alone in another process: the same per-sample flags
    alone = tmp_path / "alone.sqlite"
    command = grid_command(alone)
    for flag, value in (("--defense", NOISY), ("--attack", "fgsm"), ("--eps", EPS[-1])):
        command[command.index(flag) + 1] = value  # one cell of the grid's, and the baseline's
    done = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path / "c3"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    noisy = per_sample(alone)
    assert len(noisy) == 4 and {h: per_sample(db)[h] for h in noisy} == noisy


def _noisy_cells(store: Store) -> dict[str, tuple[bytes, bytes]]:
    df = store.frame()
    df = df[df["defense"] == NOISY]
    return {r.config_hash: (r.clean_correct.tobytes(), r.robust_correct.tobytes())
            for r in df.itertuples()}


def test_a_randomized_defense_gives_the_same_cell_alone_in_a_grid_and_in_another_order(
        tmp_path: Path, register_plugin: Callable[..., str]) -> None:
    register_plugin(DEFENSES, NOISY, NoisyDefense)
    base = {"datasets": ("digits",), "n": 60, "model_opts": {"epochs": 1},
            "threats": ("oblivious", "whitebox")}
    alone = Store(tmp_path / "alone.sqlite")
    torch.manual_seed(1)  # whatever state the process's RNG is in must not matter
    run_grid(RunConfig(defenses=(NOISY,), attacks=("fgsm",), eps=(0.2,), **base), alone,
           Cache(tmp_path / "c"))
    grid = Store(tmp_path / "grid.sqlite")  # other cells run before it, in the same process
    torch.manual_seed(2)
    cfg = RunConfig(defenses=("bitdepth", NOISY), attacks=("noise", "fgsm"), eps=(0.1, 0.2),
                    **base)
    run_grid(cfg, grid, Cache(tmp_path / "c"))
    reordered = Store(tmp_path / "reordered.sqlite")
    torch.rand(1000)
    run_grid(RunConfig(defenses=(NOISY, "bitdepth"), attacks=("fgsm", "noise"), eps=(0.2, 0.1),
                     **base), reordered, Cache(tmp_path / "c"))
    cells = _noisy_cells(alone)
    assert len(cells) == 2
    assert {h: _noisy_cells(grid)[h] for h in cells} == cells
    assert {h: _noisy_cells(reordered)[h] for h in cells} == cells
    # the noise really decides outcomes: under another evaluation seed the flags differ
    s = Planner(cfg, Cache(tmp_path / "c")).sessions()[0]
    one, _ = s.evaluate(s.defense(NOISY), s.test[0], seed=1)
    two, _ = s.evaluate(s.defense(NOISY), s.test[0], seed=2)
    assert not torch.equal(one, two)


def test_rerun_is_noop_and_baseline_threats_share_examples(tmp_path: Path) -> None:
    cfg = RunConfig(datasets=("digits",), defenses=("none",), attacks=("fgsm",), n=30,
                    eps=(0.2,), model_opts={"epochs": 1})
    store = Store(tmp_path / "r.sqlite")
    hashes = run_grid(cfg, store, Cache())
    df = store.frame()
    assert len(hashes) == 2 and len(df) == 2
    assert set(df["threat"]) == {"oblivious", "whitebox"}
    # the undefended model is the same target under both threats: identical outcomes
    a, b = df["robust_correct"]
    assert (a == b).all()
    before = store.frame()["created_at"].tolist()
    assert run_grid(cfg, store, Cache()) == hashes
    assert store.frame()["created_at"].tolist() == before


def test_row_holds_the_design_fields(tmp_path: Path) -> None:
    cfg = RunConfig(datasets=("digits",), defenses=("none",), attacks=("noise",), n=25,
                    eps=(0.1,), threats=("oblivious",), seed=3, model_opts={"epochs": 1})
    store = Store(tmp_path / "r.sqlite")
    run_grid(cfg, store, Cache())
    row = store.frame().iloc[0]
    assert row["n"] == 25 and len(row["robust_correct"]) == 25
    assert row["seed"] == 3 and row["eps"] == pytest.approx(0.1)
    assert row["versions"]["torch"] and row["device"] == "cpu"
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=False).stdout.strip()
    assert row["git_rev"].removesuffix("-dirty") == (head or "unknown")  # this checkout's HEAD
    assert row["config"]["attack"] == "noise" and row["wall_time"] > 0
    clean, robust = row["clean_correct"], row["robust_correct"]
    assert row["clean_acc"] == pytest.approx(clean.mean()) and clean.mean() > 0.5  # trained
    assert row["robust_acc"] == pytest.approx(robust.mean())
    assert not (robust & ~clean).any(), "robust where wrong on the clean image"


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
    run_grid(cfg, store, Cache())
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


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_attacking_only_the_survivors_changes_no_stored_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str,
        register_plugin: Callable[..., str]) -> None:
    """Whitebox sets through a deterministic defense attack only the images it gets right
    clean; robust = correct clean and under attack, so every stored per-sample flag is the one
    attacking every image gives (random starts included), and the saving is recorded. On CUDA
    this holds only if the kernels compute each row independently of the batch's shape (the
    nightly GPU job checks it)."""

    register_plugin(DEFENSES, NOISY, NoisyDefense)
    cfg = RunConfig(datasets=("digits",), defenses=("none", "bitdepth", "median", NOISY),
                    attacks=("fgsm", "pgd10", "cw100", "mifgsm10"), threats=("whitebox",),
                    n=120, batch_size=50, model_opts={"epochs": 1}, eval_draws=2, eot=2,
                    device=device)
    cache = Cache(tmp_path / "cache")
    adversarial, craft = AdversarialSets.adversarial, AdversarialSets.craft
    sets: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}

    def recorded(self: AdversarialSets, attack: Attack, target: Target,
                 defense: object = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        x_adv = adversarial(self, attack, target, defense, keep=keep)  # type: ignore[arg-type]
        sets.setdefault(f"{attack.name} {target.key}", []).append((x_adv, keep))
        return x_adv

    def everything(self: AdversarialSets, attack: object, target: object, x: torch.Tensor,
                   y: torch.Tensor, seed_of: object, keep: object = None) -> torch.Tensor:
        return craft(self, attack, target, x, y, seed_of)  # type: ignore[arg-type]

    monkeypatch.setattr(AdversarialSets, "adversarial", recorded)
    run_grid(cfg, Store(tmp_path / "survivors.sqlite"), cache)
    monkeypatch.setattr(AdversarialSets, "craft", everything)
    run_grid(cfg, Store(tmp_path / "all.sqlite"), cache)
    want, got = per_sample(tmp_path / "all.sqlite"), per_sample(tmp_path / "survivors.sqlite")
    assert sorted(got) == sorted(want) and len(got) == 4 * 4
    assert got == want
    partial = 0
    for key, [(part, keep), (whole, _)] in sets.items():  # the examples too, bit for bit
        kept = keep if keep is not None else torch.ones(len(whole), dtype=torch.bool)
        assert torch.equal(part[kept], whole[kept]), key
        partial += int(keep is not None)
    assert partial == 2 * 4  # bitdepth and median, every attack
    frame = Store(tmp_path / "survivors.sqlite").frame()
    for _, row in frame.iterrows():
        clean = int(row["clean_correct"].sum())
        assert not (row["robust_correct"] & ~row["clean_correct"]).any()
        skipped = row["defense"] in ("bitdepth", "median")  # deterministic, through the defense
        assert row["metadata"]["attacked"] == (clean if skipped else row["n"]), row["defense"]
    assert (frame["clean_acc"] < 1).all()  # so the deterministic rows did skip images
