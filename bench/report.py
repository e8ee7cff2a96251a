"""Leaderboard tables from the result store: wide (one row per defense), long (one row per cell),
all-or-nothing worst case, and their Markdown / CSV / JSON / HTML exports.

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

import html
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps
from bench.errors import ConfigError
from bench.registry import natural_key
from bench.threat import Threat

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "json", "html")
LONG_COLUMNS = (
    "dataset", "split", "model", "defense", "defense_kind", "attack", "threat", "norm", "eps",
    "n", "clean_acc", "robust_acc", "denoise_loss", "bpda", "wall_time", "seed", "attack_params",
    "defense_params", "device", "git_rev", "config_hash", "created_at",
)
ROW_KEYS = ["dataset", "model", "defense"]
CELL_KEYS = [*ROW_KEYS, "attack", "threat", "norm", "eps"]
_THREAT_NOTES = {
    Threat.OBLIVIOUS.value: "the attack sees the classifier only",
    Threat.WHITEBOX.value: "adaptive, through the whole defended pipeline",
}
_BPDA_MARK = "†"


def _require(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        raise ConfigError("The result store holds no cells yet: run `python -m bench run ...` "
                          "first (or pass --results PATH to read another store).")
    return df


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


def column_label(attack: str, threat: str, eps: float, norm: str | None = None) -> str:
    """The wide table's column name, e.g. ``pgd100/whitebox@8/255`` (``norm`` appended if given)."""
    label = f"{attack}/{threat}@{format_eps(float(eps))}"
    return f"{label} ({norm})" if norm else label


# Settings named in the base labels, or with a column of their own in the wide table.
_COLUMN_BASE = ("attack", "threat", "norm", "eps")
_ROW_BASE = ("dataset", "model", "defense")
_VISIBLE = {*_COLUMN_BASE, *_ROW_BASE, "n"}
_SAME_AS = {"attack_params.seed": "seed"}  # an attack's seed is the run's seed (a row setting)
_HASHES = ("slice", "classifier", "defense_weights")  # named only when nothing readable differs
_MODEL_SIDE = ("model_opts.", "classifier")  # beside the model; the rest beside the defense


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": canonical JSON of the value}``."""
    if isinstance(obj, dict) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(obj, sort_keys=True, default=str)}


def _settings(row: Any) -> dict[str, str]:
    """Every setting of a cell: its stored configuration, completed from the row's columns (rows
    written by older versions hold less configuration)."""
    flat = _flat(row.config if isinstance(row.config, dict) else {})
    for key in ("dataset", "split", "n", "model", "defense", "attack", "threat", "norm", "seed"):
        flat.setdefault(key, json.dumps(_native(getattr(row, key)), default=str))
    flat["eps"] = json.dumps(float(row.eps))
    for group in ("attack_params", "defense_params"):
        for k, v in _flat(getattr(row, group) or {}, f"{group}.").items():
            flat.setdefault(k, v)
    return {k: v for k, v in flat.items() if k not in _SAME_AS and k != "attack_params"
            and k != "defense_params"}


def _is_column_setting(key: str) -> bool:
    return key in _COLUMN_BASE or key.startswith("attack_params.")


def _show(key: str, value: str) -> str:
    name = key.split(".", 1)[1] if key.startswith(("attack_params.", "defense_params.")) else key
    name = "model." + key.split(".", 1)[1] if key.startswith("model_opts.") else name
    shown = json.loads(value)
    if key in _HASHES or key == "config_hash":
        shown = str(shown)[-8:] if key == "slice" else str(shown)[:8]
    elif isinstance(shown, str) or shown is None:
        shown = "none" if shown is None else shown
    else:
        shown = json.dumps(shown, separators=(",", ":"))
    return f"{name}={shown}"


def _varying(settings: list[dict[str, str]], groups: list[Any], keep: Any) -> dict[Any, list[str]]:
    """Per group, the settings (``keep(key)`` true) whose values differ among its cells."""
    out: dict[Any, list[str]] = {}
    for g in dict.fromkeys(groups):
        members = [st for st, gg in zip(settings, groups, strict=True) if gg == g]
        keys = sorted({k for st in members for k in st if keep(k)})
        out[g] = [k for k in keys if len({st.get(k) for st in members}) > 1]
    return out


def identify(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with the labels that identify each one in the wide table.

    Adds ``_model`` and ``_defense`` (the row's model and defense, with the settings that
    distinguish the row from others of the same dataset, model and defense), ``_row`` (the row's
    key) and ``_label`` (the column: ``attack/threat@eps`` plus the attack settings that
    distinguish it from other columns of that name). Readable settings are used first; weight
    and data digests, then the config hash, only where cells would otherwise still collide.
    """
    settings = [_settings(r) for r in cells.itertuples(index=False)]
    show_norm = cells["norm"].nunique() > 1
    bases = [column_label(r.attack, r.threat, r.eps, r.norm if show_norm else None)
             for r in cells.itertuples(index=False)]
    col_keys = _varying(settings, bases, lambda k: _is_column_setting(k) and k not in _VISIBLE)
    labels = [base + (" (" + ", ".join(_show(k, st.get(k, "null")) for k in col_keys[base])
                      + ")" if col_keys[base] else "")
              for base, st in zip(bases, settings, strict=True)]
    row_bases = list(cells[list(_ROW_BASE)].itertuples(index=False, name=None))
    for with_hashes in (False, True):
        row_keys = _varying(settings, row_bases, lambda k, h=with_hashes: (
            not _is_column_setting(k) and k not in _ROW_BASE and (h or k not in _HASHES)))
        rows = [base + tuple(st.get(k, "null") for k in row_keys[base])
                for base, st in zip(row_bases, settings, strict=True)]
        if len(set(zip(rows, labels, strict=True))) == len(cells):
            break
    else:  # still colliding (cells of an older schema): the config hash tells them apart
        for st, h in zip(settings, cells["config_hash"], strict=True):
            st["config_hash"] = json.dumps(h)
        row_keys = {b: [*ks, "config_hash"] for b, ks in row_keys.items()}
        rows = [base + tuple(st.get(k, "null") for k in row_keys[base])
                for base, st in zip(row_bases, settings, strict=True)]

    def side(base: tuple[str, ...], st: dict[str, str], model: bool) -> str:
        keys = [k for k in row_keys[base] if k not in _VISIBLE
                and k.startswith(_MODEL_SIDE) == model]
        name = base[1] if model else base[2]
        return name + (" (" + ", ".join(_show(k, st.get(k, "null")) for k in keys) + ")"
                       if keys else "")

    return cells.assign(
        _label=labels, _column_base=bases, _row=[json.dumps(r) for r in rows],
        _model=[side(b, st, True) for b, st in zip(row_bases, settings, strict=True)],
        _defense=[side(b, st, False) for b, st in zip(row_bases, settings, strict=True)])


def leaderboard(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """The wide leaderboard: one row per (dataset, model, defense) and distinguishing settings,
    robust accuracy per column.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: the defense shown first in each (dataset, model) block (e.g. the undefended
            one); None keeps the order of first appearance.

    Returns:
        Columns ``dataset, model, defense, kind, clean_acc, n`` then one column per
        distinguishable (attack, threat, eps, settings) labelled as :func:`identify` does,
        accuracies in [0, 1], NaN where a cell was not run. ``model`` and ``defense`` carry the
        settings that distinguish rows of the same names. Every stored cell has its own table
        cell. ``attrs["bpda"]`` lists ``[row key, column]`` pairs whose attack used BPDA, the row
        key being ``dataset/model/defense`` as shown.

    Raises:
        ConfigError: ``df`` is empty.
    """
    cells = identify(_ordered(_require(df), baseline))
    columns = list(dict.fromkeys(cells.sort_values(["_a", "_t", "norm", "eps"],
                                                   kind="stable")["_label"]))
    rows, bpda = [], []
    for _, g in cells.groupby("_row", sort=False):
        first = g.iloc[0]
        key = f"{first['dataset']}/{first['_model']}/{first['_defense']}"
        row = {"dataset": first["dataset"], "model": first["_model"],
               "defense": first["_defense"], "kind": first["defense_kind"],
               "clean_acc": float(g["clean_acc"].mean()), "n": int(first["n"])}
        row.update({c: float("nan") for c in columns})
        row.update(dict(zip(g["_label"], g["robust_acc"].astype(float), strict=True)))
        rows.append(row)
        bpda += [[key, label] for label in g.loc[g["bpda"].astype(bool), "_label"]]
    wide = pd.DataFrame(rows, columns=["dataset", "model", "defense", "kind", "clean_acc", "n",
                                       *columns])
    wide.attrs.update(attack_columns=columns, bpda=bpda)
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
    cells = identify(_ordered(_require(df), baseline))
    rows = []
    for _, g in cells.groupby(["_row", "threat", "norm", "eps"], sort=False):
        correct = np.stack([np.asarray(c, dtype=bool) for c in g["robust_correct"]])
        first = g.iloc[0]
        rows.append({"dataset": first["dataset"], "model": first["_model"],
                     "defense": first["_defense"], "threat": first["threat"],
                     "eps": first["eps"], "n": int(first["n"]),
                     "attacks": ",".join(dict.fromkeys(g["_label"].str.split("/").str[0])),
                     "worst_case_acc": float(correct.all(axis=0).mean()),
                     "min_single_acc": float(g["robust_acc"].min())})
    return pd.DataFrame(rows)


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * float(value):.1f}"


def _display(wide: pd.DataFrame) -> pd.DataFrame:
    """The wide table as strings: percentages, BPDA cells marked ``†``."""
    out = wide.astype(object).copy()
    bpda = {tuple(p) for p in wide.attrs.get("bpda", [])}
    for i, row in wide.iterrows():
        key = f"{row['dataset']}/{row['model']}/{row['defense']}"
        out.at[i, "n"] = str(row["n"])
        out.at[i, "clean_acc"] = _pct(row["clean_acc"])
        for col in wide.attrs.get("attack_columns", []):
            mark = _BPDA_MARK if (key, col) in bpda else ""
            out.at[i, col] = _pct(row[col]) + mark
    return out.rename(columns={"clean_acc": "clean"})


def caption(df: pd.DataFrame) -> str:
    """One line saying what the numbers are, on how many images, and what produced them."""
    df = _require(df)
    parts = []
    for (ds, split), g in df.groupby(["dataset", "split"], sort=False):
        lo, hi = int(g["n"].min()), int(g["n"].max())
        parts.append(f"{ds}/{split}: n = {lo}" + (f"–{hi}" if hi != lo else ""))
    threats = sorted(set(df["threat"]), key=_threat_rank)
    notes = [f"{t} ({_THREAT_NOTES[t]})" if t in _THREAT_NOTES else t for t in threats]
    revs = ", ".join(sorted(set(df["git_rev"].astype(str))))
    date = str(df["created_at"].max())[:10]
    marks = ([f"{_BPDA_MARK} gradients through BPDA."] if df["bpda"].astype(bool).any() else [])
    cells = identify(df)
    if ((cells["_label"] != cells["_column_base"]) | (cells["_model"] != cells["model"])
            | (cells["_defense"] != cells["defense"])).any():
        marks.append("Settings in parentheses distinguish rows or columns that share a name "
                     "(the CSV has every cell's full configuration).")
    attacks = ", ".join(sorted(set(df["attack"]), key=natural_key))
    return " ".join([
        f"Accuracy (%) of each defended classifier on n test images per cell "
        f"({'; '.join(parts)}). Attacks: {attacks}; threat models: {'; '.join(notes)}; "
        f"columns are attack/threat@eps (L-inf radius on the [0,1] scale).", *marks,
        f"Produced by bench (git {revs}) on {date}."])


def to_markdown(wide: pd.DataFrame, text: str) -> str:
    """A Markdown pipe table of the wide leaderboard followed by the caption ``text``."""
    shown = _display(wide)
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |",
             "|" + "|".join("---" if c in ("dataset", "model", "defense", "kind") else "---:"
                            for c in shown.columns) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
    return "\n".join(lines) + f"\n\n{text}\n"


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def to_records(long: pd.DataFrame) -> list[dict[str, Any]]:
    """The long table as JSON-ready dicts: Python scalars, NaN as None, params decoded."""
    records = []
    for rec in long.to_dict(orient="records"):
        rec = {k: _native(v) for k, v in rec.items()}
        for col in ("attack_params", "defense_params"):
            if isinstance(rec.get(col), str):
                rec[col] = json.loads(rec[col])
        records.append(rec)
    return records


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:nth-child(-n+4){text-align:left}
p.caption{max-width:60em;color:#555}img{max-width:100%;margin:1em 0;display:block}"""


def to_html(df: pd.DataFrame, baseline: str | None = None, out_dir: Path | None = None) -> str:
    """A static self-contained page: wide table, worst case, long table, and the PNG plots found
    under ``out_dir/plots`` (linked by relative path). Inline CSS, no scripts, no network."""
    wide = leaderboard(df, baseline)
    plots = sorted((out_dir / "plots").glob("*.png")) if out_dir is not None else []
    worst = worst_case(df, baseline)
    for col in ("worst_case_acc", "min_single_acc"):
        worst[col] = worst[col].map(_pct)
    worst["eps"] = worst["eps"].map(format_eps)
    worst = worst.rename(columns={"worst_case_acc": "all attacks (%)",
                                  "min_single_acc": "strongest single attack (%)"})
    body = [
        "<h1>Adversarial defense leaderboard</h1>",
        f'<p class="caption">{html.escape(caption(df))}</p>',
        _display(wide).to_html(index=False, na_rep="–"),
        "<h2>All-or-nothing (correct under every attack)</h2>",
        worst.to_html(index=False, na_rep="–"),
        "<h2>Plots</h2>" if plots else "",
        *(f'<img src="plots/{html.escape(p.name)}" alt="{html.escape(p.stem)}">' for p in plots),
        "<h2>Every cell</h2>",
        long_table(df, baseline).to_html(index=False, na_rep="–", float_format="%.4g"),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>bench leaderboard</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def render(df: pd.DataFrame, fmt: str, out_dir: str | Path | None = None,
           baseline: str | None = None) -> str:
    """Render the leaderboard as ``md``, ``csv``, ``json`` or ``html``.

    Args:
        df: cells as returned by ``Store.frame()``.
        fmt: ``md`` (wide table in %, with a caption), ``csv`` (long table), ``json`` (long
            table as records), ``html`` (static page with the tables and ``out_dir/plots/*.png``).
        out_dir: when given, write ``out_dir/leaderboard.<fmt>`` (directory created) and return
            its path; otherwise return the text.
        baseline: the defense shown first in each block (see :func:`leaderboard`).

    Raises:
        ConfigError: unknown ``fmt``, or ``df`` is empty.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown report format {fmt!r}: use one of {', '.join(FORMATS)}.")
    df = _require(df)
    out = Path(out_dir) if out_dir is not None else None
    if fmt == "md":
        text = to_markdown(leaderboard(df, baseline), caption(df))
    elif fmt == "csv":
        text = long_table(df, baseline).to_csv(index=False)
    elif fmt == "json":
        text = json.dumps(to_records(long_table(df, baseline)), indent=1) + "\n"
    else:
        text = to_html(df, baseline, out)
    if out is None:
        return text
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"leaderboard.{fmt}"
    path.write_text(text, encoding="utf-8")
    return str(path)
