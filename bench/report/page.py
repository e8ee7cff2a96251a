"""The leaderboard as one self-contained HTML page, the one ``python -m bench leaderboard --format
html --out DIR`` writes to ``DIR/leaderboard.html``.

Top to bottom: the caption; the wide table (the headline worst case first and emphasised, then
the row's flags, then every attack column, ``†`` where the attack used BPDA and ``‡`` where it
used EOT) with the legend of flags and marks; the charts of robust accuracy against eps, per
defense and threat model (:mod:`bench.report.charts`); the headline's breakdown (which attack
broke each image first) as stacked bars and as a table; one collapsible detail view per row
(:mod:`bench.report.details`: its paper, resolved parameters, what was scaled down from the
paper, its cells, provenance); the analysis plots found (:mod:`bench.report.plots`), embedded as
data URIs, or a plain statement that none were; every cell, as in the CSV.

Every table sorts when a header is clicked (a small inline script, numeric-aware; it and the
style sheet are in :mod:`bench.report._page_assets`). The page loads nothing: no network, no
library, no file beside it; the charts are inline SVG drawn in Python. Two query parameters
serve links and tests: ``?sort=TABLE_ID:COLUMN[:desc]`` sorts a table on load (COLUMN counts
from 0; the ids are ``board``, ``breakdown`` and ``cells``) and ``?open=all`` expands every
detail view.

Example::

    df = open_store(results_path(), must_exist=True).frame()
    Path("site/leaderboard.html").write_text(build_page(df, "none", Path("site")))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import format_eps
from bench.report._html import cell as _cell
from bench.report._html import esc as _esc
from bench.report._html import flag_badge as _flag
from bench.report._html import num as _num
from bench.report._html import pct as _pct
from bench.report._html import table as _table
from bench.report._page_assets import CSS, SCRIPT
from bench.report.caption import caption
from bench.report.charts import breakdown_figures, eps_section
from bench.report.details import detail, paper
from bench.report.headline import Cell, grouped, rank_label, records
from bench.report.identity import identify
from bench.report.plots import plots_section
from bench.report.tables import _plain, leaderboard, long_table, place_labels, worst_case

__all__ = ["BPDA_MARK", "EOT_MARK", "MARKS", "build_page", "paper"]

BPDA_MARK, EOT_MARK = "†", "‡"
RANK = "_rank"  # the board's column of the places (wide columns rank_best@EPS, rank_worst@EPS)
MARKS = {
    BPDA_MARK: "BPDA: the defense is not differentiable, so the attack's gradients went through "
               "it with the identity as the backward pass (Athalye et al., ICML 2018).",
    EOT_MARK: "EOT: the attack averaged its gradients over draws of the randomized defense "
              "(Expectation over Transformation; the cell's tooltip gives the draws).",
}


def _row_key(row: Any) -> str:
    return f"{row['dataset']}/{row['model']}/{row['defense']}"


def _marks(wide: pd.DataFrame, cells: list[Cell]) -> dict[tuple[str, str], dict[str, str]]:
    """``(row key, column) -> {mark: tooltip}`` for the cells that used BPDA or EOT."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for key, col in wide.attrs.get("bpda", []):
        out.setdefault((key, col), {})[BPDA_MARK] = "gradients through BPDA"
    for c in cells:
        draws = [d["eot"] for d in (c["config"], c["metadata"]) if isinstance(d, dict)
                 and d.get("eot")]
        if draws:
            out.setdefault((c["_key"], c["_label"]), {})[EOT_MARK] = f"EOT over {draws[0]} draws"
    return out


def _head(wide: pd.DataFrame, flagged: bool) -> tuple[list[str], list[str]]:
    """The wide table's columns in page order (``RANK`` for the places), and their header
    cells."""
    heads = set(wide.attrs.get("headline_columns", []))
    covers = set(wide.attrs.get("covers_columns", []))
    first = [c for c in wide.columns if c in heads or c in covers]
    ranked = bool(wide.attrs.get("rank_columns"))
    cols = ["dataset", "model", "defense", *([RANK] if ranked else []), *first,
            *(["flags"] if flagged else []), "clean_acc", "n", "kind",
            *wide.attrs.get("attack_columns", [])]
    tips = {"clean_acc": "clean accuracy (%)", "flags": "warnings about the evaluation",
            RANK: "the places the row can hold in its block given the headlines' 95% intervals; "
                  "a range marks rows not separated (the baseline is not ranked)"}
    names = {"clean_acc": "clean", RANK: rank_label(wide.attrs["rank_eps"]) if ranked else ""}
    th = []
    for c in cols:
        cls = "headline" if c in heads else "covers" if c in covers else ""
        tip = ("per-image worst case (%): correct clean and under every attack and threat model "
               "stored for the row; in parentheses its 95% Wilson interval over the n images"
               if c in heads else "attacks the worst case covers"
               if c in covers else tips.get(c, ""))
        text = _esc(names.get(c, c)).replace("/", "/<wbr>")
        th.append(_cell(text.replace("@", "<wbr>@"), cls=cls, title=tip, tag="th"))
    return cols, th


def _board(wide: pd.DataFrame, marks: dict[tuple[str, str], dict[str, str]],
           flags: dict[str, list[dict[str, Any]]] | None) -> str:
    """The wide table: one row per defense, the headline first."""
    cols, th = _head(wide, flags is not None)
    heads = set(wide.attrs.get("headline_columns", []))
    covers = set(wide.attrs.get("covers_columns", []))
    intervals = wide.attrs.get("interval_columns", {})
    ranks = wide.attrs.get("rank_columns") or []
    shown = place_labels(wide, ranks) if ranks else []
    rows = []
    for i, r in enumerate(_plain(wide).to_dict(orient="records")):
        key, tds = _row_key(r), []
        for c in cols:
            if c == RANK:
                tds.append(_cell(_esc(shown[i]), r[ranks[0]], "rank"))
            elif c in intervals:
                tds.append(_cell(_headline(r[c], *(r[x] for x in intervals[c])), r[c],
                                 "headline"))
            elif c == "defense":
                tds.append(_cell(f'<a href="#row-{i}">{_esc(r[c])}</a>', cls="name"))
            elif c == "flags":
                tds.append(_cell(" ".join(map(_flag, (flags or {}).get(key, []))), cls="flags"))
            elif c in ("dataset", "model", "kind"):
                tds.append(_cell(_esc(r[c]), cls="name"))
            elif c in covers or c == "n":
                tds.append(_cell(str(int(r[c])) if r[c] else "–", r[c],
                                 "covers" if c in covers else ""))
            else:
                m = marks.get((key, c), {})
                tds.append(_cell(_pct(r[c]) + "".join(m), r[c], "headline" if c in heads else "",
                                 "; ".join(m.values())))
        rows.append(tds)
    return _table("board", th, rows, "board")


def _headline(value: Any, low: Any, high: Any) -> str:
    """A headline cell's content: the number, then its interval in smaller type."""
    if _num(value) is None:
        return "–"
    return _pct(value) + (f' <span class="ci">({_pct(low)}–{_pct(high)})</span>'
                          if _num(low) is not None else "")


def _legend(flags: dict[str, list[dict[str, Any]]] | None, legend: dict[str, str],
            used_marks: set[str]) -> str:
    """The flags raised (and the checks that raised none) and the marks, explained."""
    raised: dict[str, str] = {}
    for found in (flags or {}).values():
        for f in found:
            raised.setdefault(str(f.get("code", "?")), str(f.get("title", "")))
    items = [f"<dt>{_flag({'code': code}, False)}</dt><dd>{_esc(legend.get(code) or title)}</dd>"
             for code, title in raised.items()]
    items += [f"<dt>{_flag({'code': code}, False, 'flag unused')}</dt>"
              f'<dd class="unused">{_esc(text)} (not raised)</dd>'
              for code, text in legend.items() if code not in raised]
    if flags is not None and not raised:
        items.insert(0, "<dt>flags</dt><dd>No row raised a flag.</dd>")
    items += [f"<dt>{_esc(m)}</dt><dd>{_esc(MARKS[m])}</dd>" for m in MARKS if m in used_marks]
    return f'<dl class="legend">{"".join(items)}</dl>' if items else ""


def _breakdown(wide: pd.DataFrame, df: pd.DataFrame, baseline: str | None, figures: str) -> str:
    """The headline's breakdown (``figures``: its charts, then the table), then the
    all-or-nothing accuracy per threat model (collapsed)."""
    table = wide.attrs.get("breakdown")
    if table is None or not len(table):
        return ""
    th = [_cell(_esc(h), tag="th") for h in ("dataset", "model", "defense", "eps", "n",
                                              "worst case (%)", "95% interval (%)", "robust",
                                              "attacks", "broken first by (images)")]
    rows = [[_cell(_esc(r.dataset), cls="name"), _cell(_esc(r.model), cls="name"),
             _cell(_esc(r.defense), cls="name"), _cell(_esc(format_eps(r.eps)), r.eps),
             _cell(str(r.n), r.n), _cell(_pct(r.worst_case_acc), r.worst_case_acc, "headline"),
             _cell(f"{_pct(r.worst_case_low)}–{_pct(r.worst_case_high)}", r.worst_case_low),
             _cell(str(r.robust), r.robust), _cell(str(r.attacks), r.attacks),
             _cell(_esc(r.broken_by), cls="text")] for r in table.itertuples(index=False)]
    worst = worst_case(df, baseline)
    for col in ("worst_case_acc", "min_single_acc"):
        worst[col] = worst[col].map(_pct)
    worst["eps"] = worst["eps"].map(format_eps)
    worst = worst.rename(columns={"worst_case_acc": "all attacks (%)",
                                  "min_single_acc": "strongest single attack (%)"})
    return ("<h2 id=\"breakdown-h\">Breakdown of the worst case</h2><p class=\"note\">Every image "
            "that is not robust, counted once: wrong clean first, then the attack that broke it, "
            "strongest attack first (a suite's images go to the member that broke them "
            "first).</p>" + figures + _table("breakdown", th, rows)
            + "<details><summary>All-or-nothing per threat model</summary>"
            + worst.to_html(index=False, na_rep="–", classes="sortable", table_id="threats")
            + "</details>")


def build_page(df: pd.DataFrame, baseline: str | None = None, out_dir: Path | None = None,
               legend: dict[str, str] | None = None,
               plot_dirs: Sequence[Path] | None = None) -> str:
    """The leaderboard page (see the module docstring), one self-contained HTML document.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: the defense shown first in each block (see :func:`leaderboard`), drawn black
            and dashed in the charts.
        out_dir: the folder the page is written to.
        legend: flag code -> one-sentence explanation; default the wide table's
            ``attrs["flag_legend"]`` (flags themselves come from ``attrs["flags"]``).
        plot_dirs: the folders whose ``*.png`` plots are embedded; default ``out_dir/plots``.

    Raises:
        ConfigError: ``df`` is empty.
    """
    wide = leaderboard(df, baseline)
    labelled = identify(_plain(df))  # without the store's checks, copied into each column
    cells = records(labelled.assign(_key=labelled["dataset"] + "/" + labelled["_model"] + "/"
                                    + labelled["_defense"]))  # read once, as plain records
    flags = wide.attrs.get("flags")
    legend = dict(wide.attrs.get("flag_legend") or {}) if legend is None else legend
    marks = _marks(wide, cells)
    heads = wide.attrs.get("interval_columns", {})
    rows = grouped(cells, lambda c: c["_key"])  # one pass, not a scan per row
    board_rows = _plain(wide).to_dict(orient="records")
    order = [_row_key(r) for r in board_rows]
    papers: dict[str, tuple[str, str]] = {}
    details = [detail(i, k, r, rows[k], (flags or {}).get(k, []), marks, heads, papers)
               for i, (k, r) in enumerate(zip(order, board_rows, strict=True))]
    baselines = {k for k, g in rows.items() if baseline is not None and g[0]["defense"] == baseline}
    if plot_dirs is None:
        plot_dirs = [out_dir / "plots"] if out_dir is not None else []
    long = long_table(df, baseline)
    charts = eps_section(cells, order, baselines)
    breakdown = _breakdown(wide, df, baseline, breakdown_figures(cells, order))
    body = [
        "<h1>Adversarial defense leaderboard</h1>",
        f'<p class="caption">{_esc(caption(df))}</p>',
        "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t, shown in (
            ("board", "Leaderboard", True), ("charts", "Accuracy vs eps", charts),
            ("breakdown-h", "Breakdown", breakdown), ("defenses", "Defenses", True),
            ("plots", "Plots", True), ("every", "Every cell", True)) if shown) + "</nav>",
        _board(wide, marks, flags),
        _legend(flags, legend, {m for v in marks.values() for m in v}),
        charts, breakdown, '<h2 id="defenses">Defenses</h2>', *details,
        plots_section(plot_dirs),
        f'<h2 id="every">Every cell</h2><details><summary>{len(long)} cells, one line each, as '
        "in the CSV</summary>"
        + long.to_html(index=False, na_rep="–", float_format="%.4g", classes="sortable",
                       table_id="cells") + "</details>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>bench leaderboard</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
