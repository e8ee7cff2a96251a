"""The leaderboard as one self-contained HTML page, the one ``python -m bench leaderboard --format
html --out DIR`` writes to ``DIR/leaderboard.html``.

Top to bottom: the caption; the wide table (the headline worst case first and emphasised, then
the row's flags, then every attack column, ``†`` where the attack used BPDA and ``‡`` where it
used EOT) with the legend of flags and marks; the headline's breakdown (which attack broke each
image first); one collapsible detail view per row (its paper, resolved parameters, what was scaled
down from the paper, its cells, provenance); the plots under ``DIR/plots/*.png``, embedded as
data URIs; every cell, as in the CSV.

Every table sorts when a header is clicked (a small inline script, numeric-aware; it and the
style sheet are in :mod:`bench.report._page_assets`). The page loads nothing: no network, no
library, no file beside it. Two query parameters serve links and tests:
``?sort=TABLE_ID:COLUMN[:desc]`` sorts a table on load (COLUMN counts from 0; the ids are
``board``, ``breakdown`` and ``cells``) and ``?open=all`` expands every detail view.

Example::

    df = open_store(results_path(), must_exist=True).frame()
    Path("site/leaderboard.html").write_text(build_page(df, "none", Path("site")))
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import logging
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import format_eps
from bench.errors import BenchError
from bench.report._page_assets import CSS, SCRIPT
from bench.report.caption import caption
from bench.report.headline import Cell, grouped, records
from bench.report.identity import identify
from bench.report.tables import _plain, leaderboard, long_table, worst_case

log = logging.getLogger(__name__)

BPDA_MARK, EOT_MARK = "†", "‡"
MARKS = {
    BPDA_MARK: "BPDA: the defense is not differentiable, so the attack's gradients went through "
               "it with the identity as the backward pass (Athalye et al., ICML 2018).",
    EOT_MARK: "EOT: the attack averaged its gradients over draws of the randomized defense "
              "(Expectation over Transformation; the cell's tooltip gives the draws).",
}
_PNG = b"\x89PNG\r\n\x1a\n"
_URL = re.compile(r"https?://[^\s);\]]+")
_SENTENCE_END = re.compile(r"(?<=\.)(?<!\bal\.)\s+(?=[A-Z])")  # not after "et al."


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """``value`` as a float; None for what is not a number (NaN, None, text)."""
    try:
        return None if math.isnan(out := float(value)) else out
    except (TypeError, ValueError):
        return None


def _pct(value: Any) -> str:
    return "–" if (v := _num(value)) is None else f"{100 * v:.1f}"


def _cell(text: str, value: Any = None, cls: str = "", title: str = "", tag: str = "td") -> str:
    """One table cell; ``value`` (a number) is what the sort script compares."""
    v = _num(value)
    attrs = (f' data-v="{v!r}"' if v is not None else "") + (f' class="{cls}"' if cls else "") \
        + (f' title="{_esc(title)}"' if title else "")
    return f"<{tag}{attrs}>{text}</{tag}>"


def _table(table_id: str, head: list[str], rows: Iterable[list[str]], cls: str = "") -> str:
    """A sortable table of ready-made ``<th>`` / ``<td>`` cells."""
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table{ident} class="{f"sortable {cls}".strip()}">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>\n{body}\n</tbody></table></div>")


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
    """The wide table's columns in page order, and their header cells."""
    heads = set(wide.attrs.get("headline_columns", []))
    covers = set(wide.attrs.get("covers_columns", []))
    first = [c for c in wide.columns if c in heads or c in covers]
    cols = ["dataset", "model", "defense", *first, *(["flags"] if flagged else []),
            "clean_acc", "n", "kind", *wide.attrs.get("attack_columns", [])]
    tips = {"clean_acc": "clean accuracy (%)", "flags": "warnings about the evaluation"}
    th = []
    for c in cols:
        cls = "headline" if c in heads else "covers" if c in covers else ""
        tip = ("per-image worst case (%): correct clean and under every attack and threat model "
               "stored for the row" if c in heads else "attacks the worst case covers"
               if c in covers else tips.get(c, ""))
        text = _esc("clean" if c == "clean_acc" else c).replace("/", "/<wbr>")
        th.append(_cell(text.replace("@", "<wbr>@"), cls=cls, title=tip, tag="th"))
    return cols, th


def _flag(f: dict[str, Any], tip: bool = True, cls: str = "flag") -> str:
    """A flag's code as a badge; ``tip``: its title and detail as the tooltip."""
    title = f' title="{_esc(f.get("title", ""))}: {_esc(f.get("detail", ""))}"' if tip else ""
    return f'<span class="{cls}"{title}>{_esc(f.get("code", "?"))}</span>'


def _board(wide: pd.DataFrame, marks: dict[tuple[str, str], dict[str, str]],
           flags: dict[str, list[dict[str, Any]]] | None) -> str:
    """The wide table: one row per defense, the headline first."""
    cols, th = _head(wide, flags is not None)
    heads = set(wide.attrs.get("headline_columns", []))
    covers = set(wide.attrs.get("covers_columns", []))
    rows = []
    for i, r in enumerate(_plain(wide).to_dict(orient="records")):
        key, tds = _row_key(r), []
        for c in cols:
            if c == "defense":
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


def _breakdown(wide: pd.DataFrame, df: pd.DataFrame, baseline: str | None) -> str:
    """The headline's breakdown, then the all-or-nothing accuracy per threat model (collapsed)."""
    table = wide.attrs.get("breakdown")
    if table is None or not len(table):
        return ""
    th = [_cell(_esc(h), tag="th") for h in ("dataset", "model", "defense", "eps", "n",
                                              "worst case (%)", "robust", "attacks",
                                              "broken first by (images)")]
    rows = [[_cell(_esc(r.dataset), cls="name"), _cell(_esc(r.model), cls="name"),
             _cell(_esc(r.defense), cls="name"), _cell(_esc(format_eps(r.eps)), r.eps),
             _cell(str(r.n), r.n), _cell(_pct(r.worst_case_acc), r.worst_case_acc, "headline"),
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
            "first).</p>" + _table("breakdown", th, rows)
            + "<details><summary>All-or-nothing per threat model</summary>"
            + worst.to_html(index=False, na_rep="–", classes="sortable", table_id="threats")
            + "</details>")


def paper(name: str) -> tuple[str, str]:
    """The registered defense ``name``'s one-line summary (its class docstring's first line) and
    citation (the first sentence of its module docstring's ``Paper:`` paragraph); empty strings
    for a name no longer registered."""
    from bench.registry import DEFENSES

    try:
        builder = DEFENSES.get(name).builder
    except (BenchError, ImportError, KeyError):  # unregistered now, or its plugin fails to load
        return "", ""
    summary = (inspect.getdoc(builder) or "").strip().split("\n")[0]
    module = sys.modules.get(getattr(builder, "__module__", ""))
    for para in re.split(r"\n\s*\n", getattr(module, "__doc__", None) or ""):
        text = " ".join(para.split())
        if re.match(r"Papers?:", text):
            return summary, _SENTENCE_END.split(text, maxsplit=1)[0]
    return summary, ""


def _linked(text: str) -> str:
    """``text`` escaped, its URLs as links (followed only when clicked)."""
    parts, pos = [], 0
    for m in _URL.finditer(text):
        url = _esc(m.group())
        parts += [_esc(text[pos:m.start()]), f'<a href="{url}" rel="noreferrer">{url}</a>']
        pos = m.end()
    return "".join(parts) + _esc(text[pos:])


def _merged(dicts: Iterable[Any]) -> dict[str, list[str]]:
    """Per key, the distinct values (as compact JSON or text) over ``dicts``."""
    out: dict[str, list[str]] = {}
    for d in dicts:
        for k, v in (d if isinstance(d, dict) else {}).items():
            shown = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"),
                                                              default=str)
            if shown not in out.setdefault(str(k), []):
                out[str(k)].append(shown)
    return out


def _codes(values: dict[str, list[str]], empty: str = "none") -> str:
    return " ".join(f"<code>{_esc(k)}={_esc(' | '.join(v))}</code>" for k, v in values.items()) \
        or empty


def _scaled(g: list[Cell]) -> list[str]:
    """What the row's cells record as scaled down from the paper."""
    notes: list[str] = []
    for meta in (c["metadata"] for c in g):
        meta = meta if isinstance(meta, dict) else {}
        fit = meta.get("fit") if isinstance(meta.get("fit"), dict) else {}
        texts = [v for k, v in meta.items() if "scaled" in k] + \
            [fit[k] for k in fit if k == "scaled_from_paper"]
        notes += [t if isinstance(t, str) else json.dumps(t, default=str) for t in texts
                  if t not in (None, "", {}, [])]
    return list(dict.fromkeys(notes))


def _scalars(dicts: Iterable[Any], key: str) -> dict[str, list[str]]:
    """The scalar facts under ``key`` of each metadata dict (e.g. training or classifier meta)."""
    subs = [m.get(key) for m in dicts if isinstance(m, dict) and isinstance(m.get(key), dict)]
    return {k: v for k, v in _merged(subs).items()
            if "scaled" not in k and all(not s.startswith(("{", "[")) for s in v)}


def _provenance(g: list[Cell]) -> str:
    created = sorted(str(c["created_at"]) for c in g)
    facts = {
        "git": ", ".join(sorted({str(c["git_rev"]) for c in g})),
        "created": created[0] + (f" – {created[-1]}" if created[-1] != created[0] else ""),
        "seed": ", ".join(map(str, sorted({c["seed"] for c in g}))),
        "n": ", ".join(map(str, sorted({c["n"] for c in g}))),
        "device": ", ".join(sorted({str(c["device"]) for c in g})) if "device" in g[0] else "",
    }
    text = "; ".join(f"{k} {_esc(v)}" for k, v in facts.items() if v)
    return f"{text}<br>versions: {_codes(_merged(c['versions'] for c in g))}"


def _row_cells(g: list[Cell], marks: dict[tuple[str, str], dict[str, str]]) -> str:
    """The row's cells: what ran, how, and what it scored."""
    th = [_cell(h, tag="th") for h in ("column", "robust (%)", "clean (%)", "marks",
                                        "suite members", "wall (s)")]
    rows = []
    for c in g:
        m = marks.get((c["_key"], c["_label"]), {})
        members = (c["metadata"].get("suite") or {}).get("members", []) \
            if isinstance(c["metadata"], dict) else []
        rows.append([_cell(_esc(c["_label"]), cls="name"),
                     _cell(_pct(c["robust_acc"]), c["robust_acc"]),
                     _cell(_pct(c["clean_acc"]), c["clean_acc"]),
                     _cell(_esc("; ".join(m.values()))),
                     _cell(_esc(", ".join(str(x.get("label", x)) if isinstance(x, dict) else
                                          str(x) for x in members)), cls="text"),
                     _cell(f"{float(c['wall_time']):.1f}", c["wall_time"])])
    return _table("", th, rows, "row-cells")


def _detail(i: int, r: dict[str, Any], g: list[Cell], found: list[dict[str, Any]],
            marks: dict[tuple[str, str], dict[str, str]], heads: list[str],
            papers: dict[str, tuple[str, str]]) -> str:
    """One row's detail view (``g``: the records of its cells); ``papers``: :func:`paper` of
    each defense name, filled as met."""
    name = str(g[0]["defense"])
    if name not in papers:  # one registry look-up per defense, not per row
        papers[name] = paper(name)
    summary, cite = papers[name]
    scores = ", ".join(f"{h} {_pct(r[h])}%" for h in heads)
    codes = " ".join(_flag(f, False) for f in found)
    flag_items = "".join(f'<li>{_flag(f, False)} {_esc(f.get("title", ""))}: '
                         f'{_esc(f.get("detail", ""))}</li>' for f in found)
    scaled = _scaled(g)
    facts = [
        ("Paper", (_esc(summary) + (f"<br>{_linked(cite)}" if cite else ""))
         or "not a registered defense now"),
        ("Flags", f"<ul>{flag_items}</ul>" if found else ""),
        ("Parameters", _codes(_merged(c["defense_params"] for c in g))),
        ("Scaled down", "<br>".join(map(_esc, scaled)) or "nothing recorded"),
        ("Training", _codes(_scalars([c["metadata"] for c in g], "fit"), "")),
        ("Classifier", _codes(_scalars([c["metadata"] for c in g], "classifier"), "")),
        ("Provenance", _provenance(g)),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v)
    return (f'<details class="defense" id="row-{i}"><summary><b>{_esc(_row_key(r))}</b> '
            f"<span class=\"score\">{_esc(scores)}</span> {codes}</summary>"
            f"<dl>{dl}</dl>{_row_cells(g, marks)}</details>")


def _plots(out_dir: Path | None) -> str:
    """The PNG files under ``out_dir/plots``, embedded (files that are not PNG skipped)."""
    figures = []
    for path in sorted((out_dir / "plots").glob("*.png")) if out_dir is not None else []:
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("Plot %s not embedded: %s", path, exc)
            continue
        if not data.startswith(_PNG):
            log.warning("Plot %s not embedded: not a PNG file", path)
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        figures.append(f'<figure><img src="{uri}" alt="{_esc(path.stem)}">'
                       f"<figcaption>{_esc(path.name)}</figcaption></figure>")
    return "<h2 id=\"plots\">Plots</h2>" + "".join(figures) if figures else ""


def build_page(df: pd.DataFrame, baseline: str | None = None, out_dir: Path | None = None,
               legend: dict[str, str] | None = None) -> str:
    """The leaderboard page (see the module docstring), one self-contained HTML document.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: the defense shown first in each block (see :func:`leaderboard`).
        out_dir: the folder the page is written to; its ``plots/*.png`` are embedded.
        legend: flag code -> one-sentence explanation; default the wide table's
            ``attrs["flag_legend"]`` (flags themselves come from ``attrs["flags"]``).

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
    heads = wide.attrs.get("headline_columns", [])
    rows = grouped(cells, lambda c: c["_key"])  # one pass, not a scan per row
    papers: dict[str, tuple[str, str]] = {}
    details = [_detail(i, r, rows[_row_key(r)], (flags or {}).get(_row_key(r), []), marks,
                       heads, papers) for i, r in enumerate(_plain(wide).to_dict(orient="records"))]
    long = long_table(df, baseline)
    breakdown, plots = _breakdown(wide, df, baseline), _plots(out_dir)
    body = [
        "<h1>Adversarial defense leaderboard</h1>",
        f'<p class="caption">{_esc(caption(df))}</p>',
        "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t, shown in (
            ("board", "Leaderboard", True), ("breakdown-h", "Breakdown", breakdown),
            ("defenses", "Defenses", True), ("plots", "Plots", plots),
            ("every", "Every cell", True)) if shown) + "</nav>",
        _board(wide, marks, flags),
        _legend(flags, legend, {m for v in marks.values() for m in v}),
        breakdown, '<h2 id="defenses">Defenses</h2>', *details, plots,
        f'<h2 id="every">Every cell</h2><details><summary>{len(long)} cells, one line each, as '
        "in the CSV</summary>"
        + long.to_html(index=False, na_rep="–", float_format="%.4g", classes="sortable",
                       table_id="cells") + "</details>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>bench leaderboard</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
