"""The result store as it grows: ``done()`` lookups and leaderboard rendering per cell at N and
10 N cells (docs/performance.md: 10,000 and 100,000). Flat means a ratio near 1 (target: at
most 1.5)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import render
from bench.store import COLUMNS, CellResult, Store

COLUMNS_PER_ROW = 10  # cells per leaderboard row: 10 attacks at one eps
LOOKUPS = 20  # tries of one done() lookup, the best counted


def _fill(path: Path, n: int) -> list[str]:
    """A store of ``n`` cells (n / 10 defenses x 10 attacks), written in one transaction."""
    ones = np.ones(10, dtype=np.uint8)
    proto = CellResult(config_hash="x", dataset="digits", split="test", n=10, model="cnn",
                       defense="d", defense_kind="preprocessor", attack="pgd100",
                       threat="oblivious", norm="linf", eps=0.1, seed=0, clean_correct=ones,
                       robust_correct=ones, wall_time=1.0, device="cpu", git_rev="abc",
                       attack_params={"steps": 100}).row()
    Store(path).done([])  # creates the schema
    hashes = [f"cell{i:07d}" for i in range(n)]
    rows: list[list[Any]] = []
    for i, h in enumerate(hashes):
        row = {**proto, "config_hash": h, "defense": f"d{i // COLUMNS_PER_ROW:05d}",
               "attack": f"attack{i % COLUMNS_PER_ROW}"}
        rows.append([row[c] for c in COLUMNS])
    con = sqlite3.connect(path)
    with con:
        con.executemany(f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' for _ in COLUMNS)})", rows)
    con.close()
    return hashes


def _lookup(path: Path, hashes: list[str]) -> float:
    """Seconds per looked-up hash (up to 1,000 asked, half stored) through a fresh ``Store``, its
    connection included: the best of :data:`LOOKUPS` tries, since one try takes a few ms."""
    half = min(500, len(hashes) // 2)
    asked = hashes[:half] + [f"missing{i}" for i in range(half)]
    best = float("inf")
    for _ in range(LOOKUPS):
        store = Store(path)
        t0 = time.perf_counter()
        assert len(store.done(asked)) == half
        best = min(best, time.perf_counter() - t0)
    return best / len(asked)


def _render(path: Path, n: int) -> float:
    """Seconds per cell to read the store's ``n`` cells and render their Markdown leaderboard."""
    t0 = time.perf_counter()
    render(Store(path).frame(), "md")
    return (time.perf_counter() - t0) / n


def test_store_lookups_and_rendering_stay_flat_as_the_store_grows(
        benchmark: Any, report: Any, tmp_path: Path) -> None:
    small = 20 if report.tiny else 10_000
    sizes = {}
    for n in (small, 10 * small):
        path = tmp_path / f"store{n}.sqlite"
        hashes = _fill(path, n)
        sizes[n] = _lookup(path, hashes), min(_render(path, n) for _ in range(2))
    benchmark.pedantic(lambda: Store(tmp_path / f"store{small}.sqlite").done(["cell0000001"]),
                       rounds=3)
    (l1, r1), (l10, r10) = sizes[small], sizes[10 * small]
    report.ratio(f"store done() per hash, {10 * small} vs {small} cells", l10 / l1, "<= 1.5",
                 l10 / l1 <= 1.5, f"{l1 * 1e6:.1f} vs {l10 * 1e6:.1f} us per hash")
    report.ratio(f"leaderboard per cell, {10 * small} vs {small} cells", r10 / r1, "<= 1.5",
                 r10 / r1 <= 1.5, f"{r1 * 1e6:.1f} vs {r10 * 1e6:.1f} us per cell")
