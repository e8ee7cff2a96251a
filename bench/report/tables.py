"""Leaderboard tables from the result store: wide (one row per defense, the per-image worst case
first), long (one row per cell), all-or-nothing per threat, and their Markdown / CSV / JSON /
HTML exports.

Every function takes the DataFrame of :meth:`bench.store.Store.frame` (one row per cell). Rows
are ordered per (dataset, model) with the baseline defense first, then the defenses in order of
first appearance; attack columns by attack name (natural order: ``fgsm``, ``ifgsm4``, ``pgd10``,
``pgd100``), then threat model (in :class:`bench.threat.Threat` order), then eps.

Nothing stored is hidden (:func:`identify`): a wide column is identified by everything that
distinguishes its cells (attack, threat, norm, eps and any resolved attack parameter that differs,
targeting included), a row by dataset, model and defense plus any other setting of the cell's
configuration that differs (defense or classifier options, n, seed, batch size, ...). The
settings that differ are written beside the name, e.g. ``jpeg (quality=50)`` or
``fgsm/oblivious@0.1 (targeted=least-likely)``; two cells never share a table cell.

Example::

    df = open_store(results_path(), must_exist=True).frame()
    print(render(df, "md", baseline="none"))
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps
from bench.errors import ConfigError
from bench.registry import natural_key
from bench.report.flags import LEGEND
from bench.report.flags import flags as row_flags
from bench.report.headline import (
    Cell,
    breakdown,
    covers_label,
    grouped,
    headline_label,
    headlines,
    high_label,
    low_label,
    records,
)
from bench.report.identity import identify
from bench.report.interval import Interval, place_label, places
from bench.threat import Threat

FORMATS = ("md", "csv", "json", "html")
LONG_COLUMNS = (
    "dataset", "split", "model", "defense", "defense_kind", "attack", "threat", "norm", "eps",
    "n", "clean_acc", "robust_acc", "denoise_loss", "bpda", "wall_time", "seed", "attack_params",
    "defense_params", "device", "git_rev", "config_hash", "created_at",
)
HEADLINE_COLUMNS = ("worst_case", "worst_case_low", "worst_case_high", "rank_best",
                    "rank_worst")  # the long table's, after LONG_COLUMNS, row and column
ROW_KEYS = ["dataset", "model", "defense"]
Heads = dict[tuple[Any, float], dict[str, Any]]  # (row, eps) -> its headline


def _require(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        raise ConfigError("The result store holds no cells yet: run `python -m bench run ...` "
                          "first (or pass --results PATH to read another store).")
    return df


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its ``attrs`` (the store's checks, a leaderboard's flags and breakdown):
    pandas deep-copies them into every frame and column derived from ``df``, a cost per column
    or row that grows with the store."""
    return pd.DataFrame(df)


def _mean(values: list[float]) -> float:
    """The mean of ``values`` but NaN, summed as ``Series.mean`` sums them (NaN as 0, in
    order), so that it is the same to the last bit."""
    a = np.asarray(values, dtype=float)
    nan = np.isnan(a)
    count = len(a) - int(nan.sum())
    return float(np.where(nan, 0.0, a).sum() / count) if count else float("nan")


def _threat_rank(threat: str) -> tuple[int, str]:
    order = [t.value for t in Threat]
    return (order.index(threat), "") if threat in order else (len(order), threat)


def _ordered(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """``df`` sorted into leaderboard order (stable: ties keep the store's creation order)."""
    df = df.reset_index(drop=True).assign(_pos=lambda d: np.arange(len(d)))
    pairs = list(df[["dataset", "model"]].itertuples(index=False, name=None))
    triples = list(df[ROW_KEYS].itertuples(index=False, name=None))
    groups = {k: i for i, k in enumerate(dict.fromkeys(pairs))}
    defense_rank: dict[tuple[str, str, str], int] = {}
    for (ds, model), g in df.groupby(["dataset", "model"], sort=False):
        names = list(dict.fromkeys(g["defense"]))
        if baseline in names:
            names.remove(baseline)
            names.insert(0, baseline)
        defense_rank.update({(ds, model, name): i for i, name in enumerate(names)})
    attacks = {a: i for i, a in enumerate(sorted(set(df["attack"]), key=natural_key))}
    threats = {t: i for i, t in enumerate(sorted(set(df["threat"]), key=_threat_rank))}
    keys = pd.DataFrame({
        "_g": [groups[k] for k in pairs],
        "_d": [defense_rank[k] for k in triples],
        "_a": df["attack"].map(attacks),
        "_t": df["threat"].map(threats),
    })
    df = pd.concat([df, keys], axis=1)
    df = df.sort_values(["_g", "_d", "_a", "_t", "norm", "eps", "_pos"], kind="stable")
    return df.reset_index(drop=True)


def sort_eps(heads: Heads) -> float | None:
    """The eps rows are sorted and ranked by: the one most attacks ran at (an audit's sweep adds
    single cells at other eps), the smallest of those tied; None without a headline."""
    covers: dict[float, int] = {}
    for (_, e), h in heads.items():
        covers[e] = covers.get(e, 0) + len(h["attacks"])
    return max(covers, key=lambda e: (covers[e], -e)) if covers else None


def rank_columns(eps: float) -> tuple[str, str]:
    """The wide table's columns of a row's best and worst place at ``eps``."""
    return f"rank_best@{format_eps(eps)}", f"rank_worst@{format_eps(eps)}"


def ranked(cells: list[Cell], heads: Heads, baseline: str | None
           ) -> tuple[float | None, dict[Any, tuple[int, int]]]:
    """The eps of :func:`sort_eps` and, at it, the places (best, worst) each ranked row can hold
    in its (dataset, model) block by :func:`bench.report.interval.places`: ranked are the rows
    with a headline there, the baseline excepted. Keyed by the row's identity (``_row``)."""
    eps = sort_eps(heads)
    blocks: dict[tuple[Any, Any], list[tuple[Any, Interval]]] = {}
    for row, g in grouped(cells, lambda c: c["_row"]).items():
        h = heads.get((row, eps)) if eps is not None else None
        if h is None or g[0]["defense"] == baseline or math.isnan(h["acc"]):
            continue
        blocks.setdefault((g[0]["dataset"], g[0]["_model"]), []).append(
            (row, Interval(h["low"], h["high"])))
    out: dict[Any, tuple[int, int]] = {}
    for rows in blocks.values():
        out.update(zip([r for r, _ in rows], places([i for _, i in rows]), strict=True))
    return eps, out


def place_labels(wide: pd.DataFrame, columns: list[str]) -> list[str]:
    """Each wide row's places as the tables show them (``1``, ``2–3``; ``–`` for a row not
    ranked), from its ``columns`` (``attrs["rank_columns"]``: best, worst)."""
    best, worst = columns
    return ["–" if b is pd.NA or b is None else place_label(int(b), int(w))
            for b, w in zip(wide[best].tolist(), wide[worst].tolist(), strict=True)]


def leaderboard(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """The wide leaderboard: one row per (dataset, model, defense) and distinguishing settings;
    the headline worst case per eps first, then robust accuracy per attack column.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: the defense shown first in each (dataset, model) block, as the reference
            (e.g. the undefended one); the other rows follow sorted by the headline at the eps
            most attacks ran at, highest first (ties keep the order of first appearance).

    Returns:
        Columns ``dataset, model, defense, kind, clean_acc, n``, then ``rank_best@EPS`` and
        ``rank_worst@EPS`` at the eps rows are sorted by (:func:`ranked`: the places a row can
        hold in its block given the headlines' intervals; NA for the baseline and rows without
        a headline there), then per eps the headline ``worst case@EPS`` (the fraction of images
        correct clean and under every attack and threat stored for the row at that eps,
        :mod:`bench.report.headline`), ``worst_case_low@EPS`` and ``worst_case_high@EPS`` (its
        95% Wilson interval over the n images, :mod:`bench.report.interval`) and ``attacks@EPS``
        (how many attacks it covers, a suite's members counted), ``flags`` (comma list of the
        row's gradient-masking flag codes, :mod:`bench.report.flags`), then one column per
        distinguishable (attack, threat, eps, settings) labelled as :func:`identify` does;
        accuracies in [0, 1], NaN where a cell was not run. ``model`` and ``defense`` carry the
        settings that distinguish rows of the same names. Every stored cell has its own table
        cell. ``attrs``: ``attack_columns``, ``headline_columns``, ``interval_columns``
        (headline column -> its low and high columns), ``covers_columns``, ``rank_eps`` (the eps
        ranked, None without headlines), ``rank_columns`` (best, worst), ``bpda`` (``[row key,
        column]`` pairs whose attack used BPDA, the row key being ``dataset/model/defense`` as
        shown), ``breakdown`` (:func:`bench.report.headline.breakdown`), ``flags`` (row key ->
        its flags with their numbers) and ``flag_legend`` (code -> meaning).

    Raises:
        ConfigError: ``df`` is empty.
    """
    checks = df.attrs.get("checks", {}) if df is not None else {}
    cells = identify(_ordered(_require(df), baseline))
    columns = list(dict.fromkeys(cells.sort_values(["_a", "_t", "norm", "eps"],
                                                   kind="stable")["_label"]))
    cell_list = records(cells)  # one pass over plain records, not a frame per row
    warnings = row_flags(cell_list, checks)
    eps_list = sorted(set(cells["eps"].astype(float)))
    heads = headlines(cell_list)
    main, place = ranked(cell_list, heads, baseline)
    rank_cols = list(rank_columns(main)) if main is not None else []
    head_cols = [c for e in eps_list for c in (headline_label(e), low_label(e), high_label(e),
                                               covers_label(e))]
    rows, bpda, eot, raw_defense = [], [], [], []
    for row_key, g in grouped(cell_list, lambda c: c["_row"]).items():
        first = g[0]
        raw_defense.append(first["defense"])
        key = f"{first['dataset']}/{first['_model']}/{first['_defense']}"
        row = {"dataset": first["dataset"], "model": first["_model"],
               "defense": first["_defense"], "kind": first["defense_kind"],
               "clean_acc": _mean([c["clean_acc"] for c in g]), "n": int(first["n"])}
        if rank_cols:
            row.update(zip(rank_cols, place.get(row_key, (None, None)), strict=True))
        for e in eps_list:
            h = heads.get((row_key, e))
            for col, part in ((headline_label(e), "acc"), (low_label(e), "low"),
                              (high_label(e), "high")):
                row[col] = h[part] if h else float("nan")
            row[covers_label(e)] = len(h["attacks"]) if h else 0
        row["flags"] = ",".join(f["code"] for f in warnings[key])
        row.update({c: float("nan") for c in columns})
        row.update({c["_label"]: float(c["robust_acc"]) for c in g})
        rows.append(row)
        bpda += [[key, c["_label"]] for c in g if bool(c["bpda"])]
        eot += [[key, c["_label"]] for c in g
                if isinstance(c["config"], dict) and "eot" in c["config"]]
    wide = pd.DataFrame(rows, columns=["dataset", "model", "defense", "kind", "clean_acc", "n",
                                       *rank_cols, *head_cols, "flags", *columns])
    for col in rank_cols:
        wide[col] = wide[col].astype("Int64")
    if len(wide) and main is not None:
        block = wide.groupby(["dataset", "model"], sort=False).ngroup()
        pinned = [0 if d == baseline else 1 for d in raw_defense]
        wide = (wide.assign(_b=block, _p=pinned, _h=-wide[headline_label(main)].fillna(-1.0))
                .sort_values(["_b", "_p", "_h"], kind="stable")
                .drop(columns=["_b", "_p", "_h"]).reset_index(drop=True))
    wide.attrs.update(attack_columns=columns, bpda=bpda, eot=eot,
                      headline_columns=[headline_label(e) for e in eps_list],
                      interval_columns={headline_label(e): [low_label(e), high_label(e)]
                                        for e in eps_list},
                      covers_columns=[covers_label(e) for e in eps_list],
                      rank_eps=main, rank_columns=rank_cols,
                      breakdown=breakdown(cell_list, heads), flags=warnings,
                      flag_legend=LEGEND)
    return wide


def long_table(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Every cell, one line each, in leaderboard order: the CSV format scripts read.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: as in :func:`leaderboard`.

    Returns:
        Columns :data:`LONG_COLUMNS` (accuracies in [0, 1]; ``attack_params`` and
        ``defense_params`` as JSON strings; per-sample arrays left out), then ``row`` and
        ``column``: where the cell is in the wide table (``dataset/model/defense`` as shown
        there, and the column label), then :data:`HEADLINE_COLUMNS`: the headline of the cell's
        row at the cell's eps with its 95% interval, and on the cells at the eps rows are
        ranked by the row's best and worst place (:func:`ranked`; NA elsewhere).

    Raises:
        ConfigError: ``df`` is empty.
    """
    cells = identify(_ordered(_require(df), baseline))
    out = cells[[c for c in LONG_COLUMNS if c in cells.columns]].copy()
    out["row"] = cells["dataset"] + "/" + cells["_model"] + "/" + cells["_defense"]
    out["column"] = cells["_label"]
    cell_list = records(cells)
    heads = headlines(cell_list)
    main, place = ranked(cell_list, heads, baseline)
    own = [heads[(c["_row"], float(c["eps"]))] for c in cell_list]
    for col, part in zip(HEADLINE_COLUMNS[:3], ("acc", "low", "high"), strict=True):
        out[col] = [h[part] for h in own]
    for i, col in enumerate(HEADLINE_COLUMNS[3:]):
        out[col] = pd.array([place[c["_row"]][i] if float(c["eps"]) == main
                             and c["_row"] in place else None for c in cell_list],
                            dtype="Int64")
    for col in ("attack_params", "defense_params"):
        if col in out:
            out[col] = out[col].map(lambda v: json.dumps(v, sort_keys=True, default=str))
    return out.reset_index(drop=True)


def worst_case(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """All-or-nothing accuracy: an image counts only if it is correct under every attack.

    Cells are combined per wide-table row (:func:`identify`: dataset, model, defense and every
    setting that distinguishes the row, n included, so only cells over the same images) and per
    (threat, norm, eps).

    Args:
        df: cells as returned by ``Store.frame()`` (needs the ``robust_correct`` 0/1 arrays).
        baseline: as in :func:`leaderboard`.

    Returns:
        Columns ``dataset, model, defense`` (as labelled in the wide table), ``threat, eps, n,
        attacks`` (comma list),
        ``worst_case_acc`` (in [0, 1]) and ``min_single_acc`` (the strongest single attack's
        accuracy, for comparison: worst_case_acc <= min_single_acc).

    Raises:
        ConfigError: ``df`` is empty.
    """
    cells = records(identify(_ordered(_require(df), baseline)))
    rows = []
    for g in grouped(cells, lambda c: (c["_row"], c["threat"], c["norm"], c["eps"])).values():
        correct = np.stack([np.asarray(c["robust_correct"], dtype=bool) for c in g])
        first = g[0]
        accs = [c["robust_acc"] for c in g if not np.isnan(c["robust_acc"])]
        rows.append({"dataset": first["dataset"], "model": first["_model"],
                     "defense": first["_defense"], "threat": first["threat"],
                     "eps": first["eps"], "n": int(first["n"]),
                     "attacks": ",".join(dict.fromkeys(c["_label"].split("/")[0] for c in g)),
                     "worst_case_acc": float(correct.all(axis=0).mean()),
                     "min_single_acc": float(min(accs)) if accs else float("nan")})
    return pd.DataFrame(rows)
