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

import numpy as np
import pandas as pd

from bench.errors import ConfigError
from bench.registry import natural_key
from bench.report.flags import LEGEND
from bench.report.flags import flags as row_flags
from bench.report.headline import (
    breakdown,
    covers_label,
    grouped,
    headline_label,
    headlines,
    records,
)
from bench.report.identity import identify
from bench.threat import Threat

FORMATS = ("md", "csv", "json", "html")
LONG_COLUMNS = (
    "dataset", "split", "model", "defense", "defense_kind", "attack", "threat", "norm", "eps",
    "n", "clean_acc", "robust_acc", "denoise_loss", "bpda", "wall_time", "seed", "attack_params",
    "defense_params", "device", "git_rev", "config_hash", "created_at",
)
ROW_KEYS = ["dataset", "model", "defense"]


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


def leaderboard(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """The wide leaderboard: one row per (dataset, model, defense) and distinguishing settings;
    the headline worst case per eps first, then robust accuracy per attack column.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: the defense shown first in each (dataset, model) block, as the reference
            (e.g. the undefended one); the other rows follow sorted by the headline at the eps
            most attacks ran at, highest first (ties keep the order of first appearance).

    Returns:
        Columns ``dataset, model, defense, kind, clean_acc, n``, then per eps the headline
        ``worst case@EPS`` (the fraction of images correct clean and under every attack and
        threat stored for the row at that eps, :mod:`bench.report.headline`) and ``attacks@EPS``
        (how many attacks it covers, a suite's members counted), ``flags`` (comma list of the
        row's gradient-masking flag codes, :mod:`bench.report.flags`), then one column per
        distinguishable (attack, threat, eps, settings) labelled as :func:`identify` does;
        accuracies in [0, 1], NaN where a cell was not run. ``model`` and ``defense`` carry the
        settings that distinguish rows of the same names. Every stored cell has its own table
        cell. ``attrs``: ``attack_columns``, ``headline_columns``, ``bpda`` (``[row key,
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
    head_cols = [c for e in eps_list for c in (headline_label(e), covers_label(e))]
    rows, bpda, eot, raw_defense = [], [], [], []
    for row_key, g in grouped(cell_list, lambda c: c["_row"]).items():
        first = g[0]
        raw_defense.append(first["defense"])
        key = f"{first['dataset']}/{first['_model']}/{first['_defense']}"
        row = {"dataset": first["dataset"], "model": first["_model"],
               "defense": first["_defense"], "kind": first["defense_kind"],
               "clean_acc": _mean([c["clean_acc"] for c in g]), "n": int(first["n"])}
        for e in eps_list:
            h = heads.get((row_key, e))
            row[headline_label(e)] = h["acc"] if h else float("nan")
            row[covers_label(e)] = len(h["attacks"]) if h else 0
        row["flags"] = ",".join(f["code"] for f in warnings[key])
        row.update({c: float("nan") for c in columns})
        row.update({c["_label"]: float(c["robust_acc"]) for c in g})
        rows.append(row)
        bpda += [[key, c["_label"]] for c in g if bool(c["bpda"])]
        eot += [[key, c["_label"]] for c in g
                if isinstance(c["config"], dict) and "eot" in c["config"]]
    wide = pd.DataFrame(rows, columns=["dataset", "model", "defense", "kind", "clean_acc", "n",
                                       *head_cols, "flags", *columns])
    if len(wide) and eps_list:
        # the eps most attacks ran at (an audit's sweep adds single cells at other eps)
        main = max(eps_list, key=lambda e: (int(wide[covers_label(e)].sum()), -e))
        first_head = headline_label(main)
        block = wide.groupby(["dataset", "model"], sort=False).ngroup()
        pinned = [0 if d == baseline else 1 for d in raw_defense]
        wide = (wide.assign(_b=block, _p=pinned, _h=-wide[first_head].fillna(-1.0))
                .sort_values(["_b", "_p", "_h"], kind="stable")
                .drop(columns=["_b", "_p", "_h"]).reset_index(drop=True))
    wide.attrs.update(attack_columns=columns, bpda=bpda, eot=eot,
                      headline_columns=[headline_label(e) for e in eps_list],
                      covers_columns=[covers_label(e) for e in eps_list],
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
        there, and the column label).

    Raises:
        ConfigError: ``df`` is empty.
    """
    cells = identify(_ordered(_require(df), baseline))
    out = cells[[c for c in LONG_COLUMNS if c in cells.columns]].copy()
    out["row"] = cells["dataset"] + "/" + cells["_model"] + "/" + cells["_defense"]
    out["column"] = cells["_label"]
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
