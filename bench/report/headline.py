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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps

CLEAN = "clean"


def headline_label(eps: float) -> str:
    """The wide table's headline column at ``eps``, e.g. ``worst case@0.2``."""
    return f"worst case@{format_eps(float(eps))}"


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


def clean_of(cells: pd.DataFrame) -> np.ndarray:
    """Per image, correct clean in every cell of ``cells`` (one row's cells, same images)."""
    return np.logical_and.reduce([np.asarray(c, dtype=bool) for c in cells["clean_correct"]])


def _attacks(cell: pd.Series) -> list[str]:
    """What one cell covers: its column label, or ``label:member`` for each suite member."""
    members = suite_members(cell["metadata"])
    if members:
        return [f"{cell['_label']}:{m['label']}" for m in members]
    return [cell["_label"]]


def worst(cells: pd.DataFrame) -> dict[str, Any]:
    """The headline of the cells of one row at one eps (labelled by
    :func:`bench.report.identity.identify`).

    Returns:
        ``acc`` (in [0, 1]), ``robust`` (per-image bool array), ``attacks`` (what it covers, a
        suite expanded into its members), ``broken_by`` (label -> images it broke first,
        ``clean`` first, then the strongest attack first; every image not robust counted once)
        and ``n``.
    """
    n = int(cells["n"].iloc[0])
    clean = clean_of(cells)
    robust = clean.copy()
    owner = np.full(n, "", dtype=object)
    owner[~clean] = CLEAN
    order = cells.assign(_acc=cells["robust_acc"].astype(float)).sort_values("_acc",
                                                                            kind="stable")
    attacks: list[str] = []
    for _, cell in order.iterrows():
        correct = np.asarray(cell["robust_correct"], dtype=bool)
        labels = _attacks(cell)
        attacks += labels
        if suite_members(cell["metadata"]):  # each image to the member that broke it first
            code = first_break(cell["metadata"])
            for k, label in enumerate(labels, start=1):
                owner[(code == k) & (owner == "")] = label
        owner[~correct & (owner == "")] = cell["_label"]
        robust &= correct
    counts = {label: int((owner == label).sum()) for label in [CLEAN, *attacks]}
    return {"acc": float(robust.mean()) if n else float("nan"), "robust": robust,
            "attacks": attacks, "n": n,
            "broken_by": {k: v for k, v in counts.items() if v or k == CLEAN}}


def headlines(cells: pd.DataFrame) -> dict[tuple[str, float], dict[str, Any]]:
    """:func:`worst` for every (row, eps) of identified ``cells``."""
    return {(row, float(eps)): worst(g)
            for (row, eps), g in cells.groupby(["_row", "eps"], sort=False)}


def breakdown(cells: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, eps): the headline, what it covers and which attack broke how many
    images first (``broken_by``: ``label: count`` in attribution order)."""
    rows = []
    for (row, eps), h in headlines(cells).items():
        first = cells[cells["_row"] == row].iloc[0]
        rows.append({"dataset": first["dataset"], "model": first["_model"],
                     "defense": first["_defense"], "eps": float(eps), "n": h["n"],
                     "worst_case_acc": h["acc"], "attacks": len(h["attacks"]),
                     "robust": int(h["robust"].sum()),
                     "broken_by": ", ".join(f"{k} {v}" for k, v in h["broken_by"].items())})
    return pd.DataFrame(rows, columns=["dataset", "model", "defense", "eps", "n",
                                       "worst_case_acc", "attacks", "robust", "broken_by"])
