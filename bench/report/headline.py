"""The headline number: the per-image worst case over every attack and threat model stored for a
row, and which attack broke each image first.

For one wide-table row (dataset, model, defense and the settings that distinguish it, so only
cells over the same images) and one eps, an image counts as robust only when the defended model
classifies it correctly clean and under every stored attack and threat model at that eps (the
mean over images of the minimum over attacks; Carlini et al., "On Evaluating Adversarial
Robustness", 2019, sec. 5). An attack suite's cell (``--attack adaptive``) counts as its members.

The breakdown attributes every image that is not robust to one attack: wrong clean first, then
the cells from the strongest (lowest accuracy) to the weakest, a suite's images to the member
that broke them first (``adaptive:apgd-ce``).

Every headline carries its 95% Wilson score interval over the row's n images
(:mod:`bench.report.interval`), computed here from n and the per-image flags: nothing of it is
stored, so every store shows it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps
from bench.report.interval import wilson

CLEAN = "clean"
Cell = dict[str, Any]  # one identified cell as a plain record: a row of the frame


def records(cells: pd.DataFrame | list[Cell]) -> list[Cell]:
    """``cells`` as plain records, one dict a cell (Python values), in the frame's order: read
    once, since a pandas row (``iterrows``, a group's frame) costs far more than the checks made
    on it; a column at a time, since pandas hands a string column out a value per call."""
    if isinstance(cells, list):
        return cells
    names = list(cells.columns)
    columns = [cells.iloc[:, i].to_numpy(dtype=object).tolist() for i in range(len(names))]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def grouped(cells: list[Cell], key: Callable[[Cell], Hashable]) -> dict[Any, list[Cell]]:
    """``cells`` grouped by ``key(cell)`` in one pass: the groups in order of first appearance,
    each group's cells in order (as ``DataFrame.groupby(..., sort=False)`` orders them)."""
    out: dict[Any, list[Cell]] = {}
    for c in cells:
        out.setdefault(key(c), []).append(c)
    return out


def argsort(values: list[float], kind: str) -> np.ndarray:
    """The order ``Series.sort_values(kind=kind)`` puts ``values`` in: NaN last, in order."""
    a = np.asarray(values, dtype=float)
    nan = np.isnan(a)
    idx = np.arange(len(a))
    return np.concatenate([idx[~nan][a[~nan].argsort(kind=kind)], idx[nan]])


def headline_label(eps: float) -> str:
    """The wide table's headline column at ``eps``, e.g. ``worst case@0.2``."""
    return f"worst case@{format_eps(float(eps))}"


def low_label(eps: float) -> str:
    """The column of the low end of the headline's 95% interval at ``eps``."""
    return f"worst_case_low@{format_eps(float(eps))}"


def high_label(eps: float) -> str:
    """The column of the high end of the headline's 95% interval at ``eps``."""
    return f"worst_case_high@{format_eps(float(eps))}"


def rank_label(eps: float) -> str:
    """The shown column of the places a row can hold at ``eps`` (``rank@0.2``)."""
    return f"rank@{format_eps(float(eps))}"


def covers_label(eps: float) -> str:
    """The column counting the attacks the headline at ``eps`` covers."""
    return f"attacks@{format_eps(float(eps))}"


def suite_members(metadata: Any) -> list[dict[str, Any]]:
    """The members recorded in a suite cell's metadata (empty for any other cell)."""
    suite = metadata.get("suite") if isinstance(metadata, dict) else None
    return list(suite.get("members", [])) if isinstance(suite, dict) else []


def first_break(metadata: Any) -> np.ndarray:
    """A suite cell's per-image first breaker as codes: 0 = wrong clean, k = member k (1-based),
    -1 = survived every member."""
    codes = metadata["suite"]["first_break"]
    return np.array([-1 if f is None else int(f) for f in codes], dtype=int)


def clean_of(cells: pd.DataFrame | list[Cell]) -> np.ndarray:
    """Per image, correct clean in every cell of ``cells`` (one row's cells, same images)."""
    return np.logical_and.reduce([np.asarray(c["clean_correct"], dtype=bool)
                                  for c in records(cells)])


def _attacks(cell: Cell) -> list[str]:
    """What one cell covers: its column label, or ``label:member`` for each suite member."""
    members = suite_members(cell["metadata"])
    if members:
        return [f"{cell['_label']}:{m['label']}" for m in members]
    return [cell["_label"]]


def worst(cells: pd.DataFrame | list[Cell]) -> dict[str, Any]:
    """The headline of the cells of one row at one eps (labelled by
    :func:`bench.report.identity.identify`; a frame or its :func:`records`).

    Returns:
        ``acc`` (in [0, 1]), ``low`` and ``high`` (its 95% Wilson interval over the n images,
        :func:`bench.report.interval.wilson`), ``robust`` (per-image bool array), ``attacks``
        (what it covers, a suite expanded into its members), ``broken_by`` (label -> images it
        broke first, ``clean`` first, then the strongest attack first; every image not robust
        counted once) and ``n``.
    """
    cells = records(cells)
    n = int(cells[0]["n"])
    clean = clean_of(cells)
    robust = clean.copy()
    owner = np.full(n, "", dtype=object)
    owner[~clean] = CLEAN
    attacks: list[str] = []
    for i in argsort([c["robust_acc"] for c in cells], "stable"):  # the strongest first
        cell = cells[i]
        correct = np.asarray(cell["robust_correct"], dtype=bool)
        labels = _attacks(cell)
        attacks += labels
        if suite_members(cell["metadata"]):  # each image to the member that broke it first
            code = first_break(cell["metadata"])
            for k, label in enumerate(labels, start=1):
                owner[(code == k) & (owner == "")] = label
        owner[~correct & (owner == "")] = cell["_label"]
        robust &= correct
    owned = Counter(owner.tolist())
    counts = {label: owned[label] for label in [CLEAN, *attacks]}
    low, high = wilson(int(robust.sum()), n)
    return {"acc": float(robust.mean()) if n else float("nan"), "low": low, "high": high,
            "robust": robust, "attacks": attacks, "n": n,
            "broken_by": {k: v for k, v in counts.items() if v or k == CLEAN}}


def headlines(cells: pd.DataFrame | list[Cell]) -> dict[tuple[str, float], dict[str, Any]]:
    """:func:`worst` for every (row, eps) of identified ``cells`` (a frame or its
    :func:`records`), in order of first appearance."""
    groups = grouped(records(cells), lambda c: (c["_row"], float(c["eps"])))
    return {key: worst(g) for key, g in groups.items()}


def breakdown(cells: pd.DataFrame | list[Cell],
              heads: dict[tuple[str, float], dict[str, Any]] | None = None) -> pd.DataFrame:
    """One line per (row, eps): the headline and its 95% interval (``worst_case_low``,
    ``worst_case_high``), what it covers and which attack broke how many images first
    (``broken_by``: ``label: count`` in attribution order). ``heads``: the :func:`headlines` of
    ``cells`` when already computed."""
    cells = records(cells)
    firsts = {row: g[0] for row, g in grouped(cells, lambda c: c["_row"]).items()}
    rows = []
    for (row, eps), h in (headlines(cells) if heads is None else heads).items():
        first = firsts[row]
        rows.append({"dataset": first["dataset"], "model": first["_model"],
                     "defense": first["_defense"], "eps": float(eps), "n": h["n"],
                     "worst_case_acc": h["acc"], "worst_case_low": h["low"],
                     "worst_case_high": h["high"], "attacks": len(h["attacks"]),
                     "robust": int(h["robust"].sum()),
                     "broken_by": ", ".join(f"{k} {v}" for k, v in h["broken_by"].items())})
    return pd.DataFrame(rows, columns=["dataset", "model", "defense", "eps", "n",
                                       "worst_case_acc", "worst_case_low", "worst_case_high",
                                       "attacks", "robust", "broken_by"])
