"""SQLite result store: one row per grid cell, written in a transaction, keyed by config hash.

A cell whose config hash is already stored is skipped (idempotent reruns); a grid killed midway
resumes where it stopped because each finished cell is committed on its own. Per-sample
correctness is stored as bytes (one 0/1 byte per test image, in slice order) so all-or-nothing
and worst-case columns can be computed later.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import check_output_path
from bench.errors import BenchError, ConfigError

SCHEMA_VERSION = 1
LOOKUP_CHUNK = 500  # hashes per done() query (SQLite allows 999 bound parameters by default)
COLUMNS = (
    "config_hash", "dataset", "split", "n", "model", "defense", "defense_kind", "attack", "threat",
    "norm", "eps", "attack_params", "defense_params", "seed", "clean_acc", "robust_acc",
    "clean_correct", "robust_correct", "denoise_loss", "bpda", "wall_time", "device", "versions",
    "git_rev", "config", "metadata", "created_at",
)
_DDL = """
CREATE TABLE IF NOT EXISTS results (
    config_hash TEXT PRIMARY KEY,
    dataset TEXT NOT NULL, split TEXT NOT NULL, n INTEGER NOT NULL, model TEXT NOT NULL,
    defense TEXT NOT NULL, defense_kind TEXT NOT NULL, attack TEXT NOT NULL, threat TEXT NOT NULL,
    norm TEXT NOT NULL, eps REAL NOT NULL, attack_params TEXT NOT NULL,
    defense_params TEXT NOT NULL, seed INTEGER NOT NULL,
    clean_acc REAL NOT NULL, robust_acc REAL NOT NULL,
    clean_correct BLOB NOT NULL, robust_correct BLOB NOT NULL,
    denoise_loss REAL, bpda INTEGER NOT NULL, wall_time REAL NOT NULL, device TEXT NOT NULL,
    versions TEXT NOT NULL, git_rev TEXT NOT NULL, config TEXT NOT NULL, metadata TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checks (
    row_id TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, detail TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (row_id, name)
);
"""
# The settings of a cell's configuration that name its column (the attack and how it ran), not
# its row: the rest (dataset, slice, classifier, defense and its weights, seed, ...) is the row,
# whose identity (:func:`row_id`) keys the audit's checks that are not attack cells.
COLUMN_SETTINGS = ("attack", "attack_params", "threat", "norm", "eps", "eot", "source", "suite")


def row_id(config: dict[str, Any]) -> str:
    """The identity of the leaderboard row a cell of configuration ``config`` belongs to: a
    digest of every setting but the attack's (:data:`COLUMN_SETTINGS`)."""
    row = {k: v for k, v in config.items() if k not in COLUMN_SETTINGS}
    text = json.dumps(row, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
_JSON_COLUMNS = ("attack_params", "defense_params", "versions", "config", "metadata")


@dataclass
class CellResult:
    """One grid cell's result; ``*_correct`` are 0/1 arrays over the evaluated test slice."""

    config_hash: str
    dataset: str
    split: str
    n: int
    model: str
    defense: str
    defense_kind: str
    attack: str
    threat: str
    norm: str
    eps: float
    seed: int
    clean_correct: np.ndarray
    robust_correct: np.ndarray
    wall_time: float
    device: str
    git_rev: str
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    denoise_loss: float | None = None
    bpda: bool = False

    @property
    def clean_acc(self) -> float:
        return float(np.mean(self.clean_correct)) if len(self.clean_correct) else float("nan")

    @property
    def robust_acc(self) -> float:
        return float(np.mean(self.robust_correct)) if len(self.robust_correct) else float("nan")

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _JSON_COLUMNS:
            d[k] = json.dumps(d[k], sort_keys=True, default=str)
        for k in ("clean_correct", "robust_correct"):
            d[k] = np.asarray(getattr(self, k), dtype=np.uint8).tobytes()
        d.update(clean_acc=self.clean_acc, robust_acc=self.robust_acc, bpda=int(self.bpda),
                 created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return d


class Store:
    """The result database at ``path`` (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ready = False  # the file is created at first use: a run refused up front leaves none

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with sqlite3.connect(self.path, timeout=60) as con:
                    con.executescript(_DDL)
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
            except sqlite3.DatabaseError as exc:
                raise BenchError(f"Result store {self.path} is not a readable SQLite file "
                                 f"({exc}). Pass another --results path or move the file "
                                 f"away.") from exc
            self._ready = True
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def has(self, config_hash: str) -> bool:
        with self._connect() as con:
            cur = con.execute("SELECT 1 FROM results WHERE config_hash = ?", (config_hash,))
            return cur.fetchone() is not None

    def done(self, hashes: Iterable[str]) -> set[str]:
        """The subset of ``hashes`` already stored: primary-key lookups, in chunks below SQLite's
        bound-parameter limit, so the cost grows with the hashes asked about, not the store."""
        hashes = list(dict.fromkeys(hashes))
        stored: set[str] = set()
        with self._connect() as con:
            for i in range(0, len(hashes), LOOKUP_CHUNK):
                chunk = hashes[i:i + LOOKUP_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                stored.update(r[0] for r in con.execute(
                    f"SELECT config_hash FROM results WHERE config_hash IN ({marks})", chunk))
        return stored

    def add(self, result: CellResult) -> bool:
        """Write one cell in its own transaction; False when its hash was already stored."""
        row = result.row()
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._connect() as con:
            cur = con.execute(
                f"INSERT OR IGNORE INTO results ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                [row[c] for c in COLUMNS],
            )
            return cur.rowcount == 1

    def add_check(self, row: str, name: str, value: float, detail: dict[str, Any],
                  replace: bool = False) -> None:
        """Record check ``name`` of leaderboard row ``row`` (:func:`row_id`); kept if present,
        unless ``replace`` (a check remeasured with another budget)."""
        with self._connect() as con:
            con.execute(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO checks VALUES "
                        f"(?, ?, ?, ?, ?)",
                        (row, name, float(value), json.dumps(detail, sort_keys=True, default=str),
                         datetime.now(timezone.utc).isoformat(timespec="seconds")))

    def checks(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored check: row id -> name -> ``{"value": ..., **detail}``."""
        with self._connect() as con:
            rows = con.execute("SELECT row_id, name, value, detail FROM checks").fetchall()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for row, name, value, detail in rows:
            out.setdefault(row, {})[name] = {"value": value, **json.loads(detail)}
        return out

    def frame(self, hashes: Iterable[str] | None = None) -> Any:
        """All rows (or those with ``hashes``) as a pandas DataFrame; JSON columns decoded."""
        import pandas as pd

        with self._connect() as con:
            df = pd.read_sql_query("SELECT * FROM results ORDER BY created_at, rowid", con)
        if hashes is not None:
            df = df[df["config_hash"].isin(set(hashes))]
        for k in _JSON_COLUMNS:
            df[k] = df[k].map(json.loads)
        for k in ("clean_correct", "robust_correct"):
            df[k] = df[k].map(lambda b: np.frombuffer(b, dtype=np.uint8).astype(bool))
        # Robust = correct clean and under attack (AutoAttack's convention), for every cell: the
        # runner stores it so; cells stored before it did hold "correct under attack" alone.
        df["robust_correct"] = [r & c for r, c in zip(df["robust_correct"], df["clean_correct"],
                                                      strict=True)]
        df["robust_acc"] = [float(r.mean()) if len(r) else float("nan")
                            for r in df["robust_correct"]]
        df["bpda"] = df["bpda"].astype(bool)
        df = df.reset_index(drop=True)
        df.attrs["checks"] = self.checks()  # the audit's checks, read with the cells
        return df


def open_store(path: str | os.PathLike[str], must_exist: bool = False) -> Store:
    """Open the store; with ``must_exist`` a missing file is a one-line ConfigError."""
    if must_exist and not Path(path).exists():
        raise ConfigError(f"No result store at {path}. Run `python -m bench run ...` first or "
                          f"pass --results PATH.")
    return Store(check_output_path(path, "--results"))
