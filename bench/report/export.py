"""The leaderboard as Markdown (with its caption), CSV, JSON, a static HTML page, and RobustBench
model-info files (:mod:`bench.report.robustbench`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import format_eps
from bench.errors import ConfigError
from bench.report.caption import BPDA_MARK, EOT_MARK, caption
from bench.report.headline import rank_label
from bench.report.identity import _native
from bench.report.page import build_page
from bench.report.robustbench import model_infos
from bench.report.tables import (
    FORMATS,
    _plain,
    _require,
    leaderboard,
    long_table,
    place_labels,
)

EXPORTS = (*FORMATS, "robustbench")  # what render writes: the tables' formats and RobustBench's


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _pct(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * float(value):.1f}"


def with_interval(value: Any, low: Any, high: Any) -> str:
    """A headline in percent with its 95% interval: ``85.8 (82.0–89.0)``; ``–`` without one."""
    if _missing(value):
        return "–"
    return f"{_pct(value)} ({_pct(low)}–{_pct(high)})" if not _missing(low) else _pct(value)


def _display(wide: pd.DataFrame) -> pd.DataFrame:
    """The wide table as strings: percentages, BPDA cells marked ``†`` (without ``attrs``)."""
    attrs, wide = wide.attrs, _plain(wide)
    out = wide.astype(object).copy()
    bpda = {tuple(p) for p in attrs.get("bpda", [])}
    eot = {tuple(p) for p in attrs.get("eot", [])}
    keys = [f"{d}/{m}/{x}" for d, m, x in zip(wide["dataset"], wide["model"], wide["defense"],
                                               strict=True)]

    def column(col: str, show: Callable[[Any], str]) -> None:  # a column at once, not a cell
        out[col] = pd.Series([show(v) for v in wide[col].tolist()], index=out.index,
                             dtype=object)

    column("n", str)
    column("clean_acc", _pct)
    intervals = attrs.get("interval_columns", {})
    for col in attrs.get("headline_columns", []):
        low, high = intervals.get(col, (None, None))
        if low in wide and high in wide:
            out[col] = pd.Series([with_interval(*v) for v in zip(
                wide[col].tolist(), wide[low].tolist(), wide[high].tolist(), strict=True)],
                index=out.index, dtype=object)
            out = out.drop(columns=[low, high])
        else:
            column(col, _pct)
    rank_cols = attrs.get("rank_columns") or []
    if rank_cols:
        out.insert(out.columns.get_loc(rank_cols[0]), rank_label(attrs["rank_eps"]),
                   place_labels(wide, rank_cols))
        out = out.drop(columns=rank_cols)
    for col in attrs.get("covers_columns", []):
        column(col, lambda v: str(int(v)) if v else "–")
    for col in attrs.get("attack_columns", []):
        marks = [(BPDA_MARK if (key, col) in bpda else "") + (EOT_MARK if (key, col) in eot
                                                              else "") for key in keys]
        out[col] = pd.Series([_pct(v) + m for v, m in zip(wide[col].tolist(), marks,
                                                           strict=True)],
                             index=out.index, dtype=object)
    return out.rename(columns={"clean_acc": "clean"})


def to_markdown(wide: pd.DataFrame, text: str) -> str:
    """A Markdown pipe table of the wide leaderboard followed by the caption ``text``."""
    shown = _display(wide)
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |",
             "|" + "|".join("---" if c in ("dataset", "model", "defense", "kind") else "---:"
                            for c in shown.columns) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
    return ("\n".join(lines) + f"\n\n{text}\n" + breakdown_lines(wide) + flag_lines(wide))


def flag_lines(wide: pd.DataFrame) -> str:
    """The rows' gradient-masking flags with their numbers, and the legend of the codes shown
    (empty when no row is flagged)."""
    flagged = {k: v for k, v in wide.attrs.get("flags", {}).items() if v}
    if not flagged:
        return ""
    legend = wide.attrs.get("flag_legend", {})
    codes = sorted({f["code"] for fs in flagged.values() for f in fs}, key=list(legend).index)
    lines = ["", "Flags (warnings that the evaluation may overstate robustness, not verdicts):",
             ""]
    lines += [f"- {key}: {f['code']} {f['detail']}" for key, fs in flagged.items() for f in fs]
    lines += ["", "Legend: " + "; ".join(f"{c} = {legend.get(c, c)}" for c in codes) + "."]
    return "\n".join(lines) + "\n"


def breakdown_lines(wide: pd.DataFrame) -> str:
    """The headline's breakdown as Markdown lines (empty when no row has a headline)."""
    table = wide.attrs.get("breakdown")
    if table is None or not len(table):
        return ""
    lines = ["", "Worst case, broken first by (images; wrong clean first, then the strongest "
             "attack first):", ""]
    for r in table.itertuples(index=False):
        lines.append(f"- {r.dataset}/{r.model}/{r.defense} @{format_eps(r.eps)}: "
                     f"{_pct(r.worst_case_acc)}% robust (95% interval {_pct(r.worst_case_low)}–"
                     f"{_pct(r.worst_case_high)}; {r.robust} of {r.n}, {r.attacks} attacks); "
                     f"{r.broken_by}")
    return "\n".join(lines) + "\n"


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


def to_html(df: pd.DataFrame, baseline: str | None = None, out_dir: Path | None = None,
            plot_dirs: Sequence[Path] | None = None) -> str:
    """The self-contained leaderboard page (:func:`bench.report.page.build_page`): the wide table
    with the headline first, flags and legend, the charts of accuracy against eps, the breakdown
    as bars and a table, one detail view per row, the PNG plots of ``plot_dirs`` (default
    ``out_dir/plots``) embedded, and every cell; sortable tables, no network."""
    return build_page(df, baseline, out_dir, plot_dirs=plot_dirs)


def write_robustbench(df: pd.DataFrame, out_dir: str | Path,
                      baseline: str | None = None) -> list[Path]:
    """Write every leaderboard row, at each of its eps, as a RobustBench model-info JSON file
    under ``out_dir`` (:func:`bench.report.robustbench.model_infos`: ``out_dir/model_info/
    <dataset>/<Linf|L2>/<model>_<defense>_eps<eps>.json``, folders created). Returns the paths.

    Raises:
        ConfigError: ``df`` is empty.
    """
    paths = []
    for rel, info in model_infos(df, baseline).items():
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def render(df: pd.DataFrame, fmt: str, out_dir: str | Path | None = None,
           baseline: str | None = None, plot_dirs: Sequence[Path] | None = None) -> str:
    """Render the leaderboard as ``md``, ``csv``, ``json``, ``html`` or ``robustbench``.

    Args:
        df: cells as returned by ``Store.frame()``.
        fmt: ``md`` (wide table in %, with a caption), ``csv`` (long table), ``json`` (long
            table as records), ``html`` (static page with the tables, charts and plots),
            ``robustbench`` (one RobustBench model-info JSON per row and eps).
        out_dir: when given, write ``out_dir/leaderboard.<fmt>`` (directory created) and return
            its path (``robustbench``: the files of :func:`write_robustbench`, their paths one a
            line); otherwise return the text (``robustbench``: one JSON object, relative path ->
            model info).
        baseline: the defense shown first in each block (see :func:`leaderboard`).
        plot_dirs: ``html``: the folders whose PNG plots are embedded (default
            ``out_dir/plots``).

    Raises:
        ConfigError: unknown ``fmt``, or ``df`` is empty.
    """
    if fmt not in EXPORTS:
        raise ConfigError(f"Unknown report format {fmt!r}: use one of {', '.join(EXPORTS)}.")
    df = _require(df)
    out = Path(out_dir) if out_dir is not None else None
    if fmt == "robustbench":
        if out is not None:
            return "\n".join(map(str, write_robustbench(df, out, baseline)))
        return json.dumps(model_infos(df, baseline), indent=1, ensure_ascii=False) + "\n"
    if fmt == "md":
        text = to_markdown(leaderboard(df, baseline), caption(df))
    elif fmt == "csv":
        text = long_table(df, baseline).to_csv(index=False)
    elif fmt == "json":
        text = json.dumps(to_records(long_table(df, baseline)), indent=1) + "\n"
    else:
        text = to_html(df, baseline, out, plot_dirs)
    if out is None:
        return text
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"leaderboard.{fmt}"
    path.write_text(text, encoding="utf-8")
    return str(path)
