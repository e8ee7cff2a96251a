"""A harness PGD-100 cell against a bare torchattacks loop on the same model and images.

The harness cell (``python -m bench run --defense none --attack pgd100 --threat oblivious``:
planning, the attack, every batch validated, the clean and robust evaluation, the stored row) and
the loop a user would otherwise write (``torchattacks.PGD`` batch by batch, then the accuracy)
run alternately, each three times; the ratio of the fastest of each (target: at most 1.02).
MNIST's ``cnn`` when the MNIST files are there (``$BENCH_DATA_ROOT``), else (and at the tiny
size) the embedded digits.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torchattacks

from bench.cache import Cache
from bench.config import RunConfig
from bench.data import get_dataset
from bench.executors import run_grid
from bench.session import Session
from bench.store import Store

EPS = 0.2
STEPS = 100


def _dataset() -> str:
    try:
        get_dataset("mnist").check(("test",))
        return "mnist"
    except Exception:  # noqa: BLE001 - any missing or unreadable file: the embedded digits
        return "digits"


def test_a_harness_pgd100_cell_costs_what_a_bare_torchattacks_loop_costs(
        benchmark: Any, report: Any, scratch: Path) -> None:
    dataset, n = ("digits", 20) if report.tiny else (_dataset(), 1000)
    cache = Cache(scratch / "cache")
    cfg = RunConfig(datasets=(dataset,), defenses=("none",), attacks=("pgd100",),
                    threats=("oblivious",), eps=(EPS,), n=n, device=report.device)
    session = Session.for_config(cfg, dataset, cache=cache)
    model = session.classifier.eval()  # trained (or loaded) once, outside the timings
    x, y = session.test

    def harness() -> None:
        shutil.rmtree(cache.root / "adversarial", ignore_errors=True)  # attack every time
        store = scratch / "store.sqlite"
        store.unlink(missing_ok=True)
        run_grid(cfg, Store(store), cache)

    def bare() -> float:
        attack = torchattacks.PGD(model, eps=EPS, alpha=EPS / 40, steps=STEPS, random_start=True)
        correct = 0
        for i in range(0, len(x), cfg.batch_size):
            xb, yb = x[i:i + cfg.batch_size], y[i:i + cfg.batch_size]
            adv = attack(xb, yb)
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == yb).sum())
        return correct / len(x)

    times: dict[str, list[float]] = {"harness": [], "bare": []}
    for _ in range(1 if report.tiny else 3):
        for name, fn in (("harness", harness), ("bare", bare)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    benchmark.pedantic(bare, rounds=1)
    h, b = min(times["harness"]), min(times["bare"])
    report.ratio(f"harness pgd100 cell / bare torchattacks ({dataset}, n={n})", h / b, "<= 1.02",
                 h / b <= 1.02, f"{h:.2f} s vs {b:.2f} s, {torch.get_num_threads()} threads")
