"""``bench run --dry-run``: everything a run checks, and the cells it would compute; nothing run.

The grid is validated exactly as a run validates it (plugin names, every option, the dataset's
files, output paths, the device) and planned exactly as a run plans it, so each cell's hash is
the one a run would store it under. Nothing is trained, attacked or written: a weight key is
known without training, and the store is only read (opened read-only, and only when it exists).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.accel import AUTO
from bench.config import RunConfig, check_output_path, format_eps, results_path
from bench.errors import ConfigError
from bench.plan import Planner


def stored_hashes(path: Path, hashes: list[str]) -> set[str]:
    """Which of ``hashes`` the store at ``path`` holds, read without writing (none when the file
    does not exist or holds no results table)."""
    if not path.is_file() or not hashes:
        return set()
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return set()
    try:
        found: set[str] = set()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            rows = con.execute(f"SELECT config_hash FROM results WHERE config_hash IN "
                               f"({','.join('?' * len(chunk))})", chunk).fetchall()
            found |= {r[0] for r in rows}
        return found
    except sqlite3.Error:
        return set()
    finally:
        con.close()


def dry_run(cfg: RunConfig) -> str:
    """The report of what ``bench run`` with ``cfg`` would do: one line per cell (its session,
    defense, attack, threat, eps, hash, and whether it is stored), then the totals."""
    if cfg.batch_size == AUTO:
        raise ConfigError("--dry-run cannot plan --batch-size auto: the batch size is part of "
                          "every cell's hash and probing it runs the models. Pass a batch size "
                          "(e.g. --batch-size 250) to see the plan.")
    path = check_output_path(results_path(cfg.results), "--results")
    planner = Planner(cfg)
    sessions = planner.sessions()
    cells = []
    for s in sessions:
        for d_name in planner.defenses():
            why = s.unsupported(d_name)
            if why:
                cells.append((f"{s.info.name}/{s.model_name}/{d_name}", None, why))
                continue
            for c in planner.plan(s, d_name):
                cells.append((f"{s.info.name}/{s.model_name}/{d_name}", c, ""))
    stored = stored_hashes(path, [c.hash for _, c, _ in cells if c is not None])
    lines = []
    for row, c, why in cells:
        if c is None:
            lines.append(f"{row}  skipped: {why}")
            continue
        state = "stored" if c.hash in stored else "to run"
        lines.append(f"{row}  {c.attack.name}/{c.threat.value}@{format_eps(c.eps)}  "
                     f"{c.hash}  {state}")
    planned = sum(1 for _, c, _ in cells if c is not None)
    lines.append(f"{planned} cells: {len(stored)} stored in {path}, {planned - len(stored)} to "
                 f"run (dry run: nothing was trained, attacked or written)")
    return "\n".join(lines) + "\n"
