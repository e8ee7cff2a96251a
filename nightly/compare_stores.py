"""Compare two result stores cell by cell and image by image (the GPU check's repeat stage).

Usage: ``python nightly/compare_stores.py FIRST.sqlite SECOND.sqlite``

Two runs of the same grid from two fresh caches must store the same cells (config hashes) with the
same per-image ``clean_correct`` and ``robust_correct`` flags. Prints one line per cell that
differs (which images, by index in the evaluated slice) and a summary line. Exit status: 0 when
the stores agree, 1 when any cell is missing from one of them or differs, 2 when a store cannot be
read or holds no cells. Only the standard library: it runs in a fraction of a second.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

FLAGS = ("clean_correct", "robust_correct")
LABEL = ("dataset", "model", "defense", "attack", "threat", "eps")
SHOWN = 10  # differing image indices printed per cell


class StoreError(Exception):
    """A store that cannot be compared (missing, unreadable, empty)."""


def read_cells(path: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """``config_hash -> (label, {flag column: bytes})`` for every cell stored at ``path``."""
    if not path.is_file():
        raise StoreError(f"{path}: no such store (did the run write it? pass --results PATH)")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute(f"SELECT config_hash, {', '.join(LABEL + FLAGS)} "
                               f"FROM results").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: not a readable bench store ({exc})") from None
    if not rows:
        raise StoreError(f"{path}: the store holds no cells (did the run finish?)")
    cells = {}
    for h, *rest in rows:
        label = "/".join(f"{v:.6g}" if isinstance(v, float) else str(v)
                         for v in rest[:len(LABEL)])
        cells[h] = (label, dict(zip(FLAGS, rest[len(LABEL):], strict=True)))
    return cells


def _differing(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} images"
    idx = [i for i, (u, v) in enumerate(zip(a, b, strict=True)) if u != v]
    shown = ", ".join(map(str, idx[:SHOWN])) + (", ..." if len(idx) > SHOWN else "")
    return f"{len(idx)} of {len(a)} images differ (indices {shown})"


def compare(first: Path, second: Path) -> tuple[int, list[str]]:
    """The number of cells in ``first``, and one line per disagreement between the stores at
    ``first`` and ``second`` (none: they agree on every cell and every image).

    Raises:
        StoreError: a store is missing, unreadable or empty.
    """
    a, b = read_cells(first), read_cells(second)
    lines = []
    for h in sorted(a.keys() | b.keys(), key=lambda k: (a.get(k) or b[k])[0]):
        if h not in a or h not in b:
            label, where = (b[h][0], first) if h not in a else (a[h][0], second)
            lines.append(f"{label} [{h}]: missing from {where}")
            continue
        label, flags_a = a[h]
        for col in FLAGS:
            if flags_a[col] != b[h][1][col]:
                lines.append(f"{label} [{h}]: {col}: {_differing(flags_a[col], b[h][1][col])}")
    return len(a), lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python nightly/compare_stores.py FIRST.sqlite SECOND.sqlite",
              file=sys.stderr)
        return 2
    first, second = map(Path, args)
    try:
        n, lines = compare(first, second)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if lines:
        print(f"compare_stores: {len(lines)} disagreement(s) between {first} and {second}: the "
              f"same configuration did not repeat image for image")
        return 1
    print(f"compare_stores: {n} cells agree image for image ({first} = {second})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
