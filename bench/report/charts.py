"""The leaderboard page's two charts, as inline SVG drawn here (no library, nothing loaded).

**Robust accuracy against eps**, one chart per (dataset, model, norm): one panel per threat
model stored, and a last panel "worst case" when there are several; in a panel one line per
defense (row), through its accuracy at each eps, the point at eps 0 being its clean accuracy.
A threat's line is the per-image worst case over that threat's attacks at each eps (the
headline rule of :mod:`bench.report.headline`, within the threat); the worst-case panel's is
the headline itself, over every attack and threat, each headline point with its 95% Wilson
interval over the n images as an error bar. The baseline is drawn black and dashed.
Colours (colour-blind safe) and marker shapes tell the defenses apart; points of one eps are set
slightly apart sideways so that equal values stay visible; each point's tooltip gives its
number.

**Which attack broke the images first**: one stacked bar per row and eps, the headline's
breakdown: robust images first (the worst case), then those wrong clean, then each attack's
share, the strongest first, a suite's images under the member that broke them first.

Example::

    cells = records(identify(df).assign(_key=...))  # as :func:`bench.report.page.build_page`
    html = eps_section(cells, order, {"digits/cnn/none"})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.config import format_eps
from bench.report._html import esc
from bench.report._svg import (
    BASELINE,
    LINES,
    MARKERS,
    ROBUST,
    SEGMENTS,
    WRONG_CLEAN,
    f1,
    ink,
    legend_rows,
    marker,
    percent_axis,
    svg,
    text,
    text_width,
)
from bench.report._svg import clip as clipped
from bench.report.headline import CLEAN, Cell, clean_of, grouped, suite_members, worst
from bench.threat import Threat

WORST = "worst case"
_PW, _PH = 270, 190  # a panel's plot area (px)
_ML, _MR, _MT, _MB = 52, 16, 26, 42  # a panel's margins: axis labels, title, ticks
_PER_ROW = 3
_BAR_W, _BAR_H, _BAR_GAP, _GROUP_GAP = 520, 13, 3, 9
_BOLD = 12.0  # a bold 11 px label measured as a regular 12 px one


@dataclass(frozen=True)
class Curve:
    """One line of a panel: a row's accuracy (in [0, 1]) at each eps (0: clean)."""

    row: str  # the row's identity (``_row``)
    key: str  # the row, ``dataset/model/defense`` as the wide table shows it
    defense: str  # its label in the legend
    # (eps, accuracy, attacks covered, low, high): the 95% interval, NaN at the clean point
    points: tuple[tuple[float, float, int, float, float], ...]


@dataclass(frozen=True)
class Panel:
    threat: str  # a threat model's value, or WORST
    title: str
    curves: tuple[Curve, ...]
    bars: bool = False  # the headline's panel: each point with its 95% interval as an error bar


@dataclass(frozen=True)
class Bar:
    """One row at one eps: ``segments`` are (category, images), robust first; they sum to n."""

    row: str
    key: str
    defense: str
    eps: float
    n: int
    segments: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Row:
    """A leaderboard row's cells, with its identity, key and label."""

    row: str
    key: str
    label: str
    cells: list[Cell]


def _threat_rank(threat: str) -> tuple[int, str]:
    order = [t.value for t in Threat]
    return (order.index(threat), "") if threat in order else (len(order), threat)


def rows_of(cells: list[Cell], order: Sequence[str]) -> list[Row]:
    """``cells`` per leaderboard row (``_row``: never two slices together) in ``order`` (row
    keys; rows of one key in order of appearance), labelled by defense, with ``n`` added where
    rows of one key differ only in it."""
    rank = {k: i for i, k in enumerate(order)}
    groups = grouped(cells, lambda c: c["_row"])
    keys = [str(g[0]["_key"]) for g in groups.values()]
    rows = [Row(r, k, str(g[0]["_defense"]) + (f" (n={g[0]['n']})" if keys.count(k) > 1
                                                 else ""), g)
            for (r, g), k in zip(groups.items(), keys, strict=True)]
    return sorted(rows, key=lambda r: rank.get(r.key, len(rank)))


def _curve(r: Row, cells: list[Cell]) -> Curve:
    """The row's per-image worst case over ``cells`` at each of their eps, clean at eps 0."""
    by_eps = grouped(cells, lambda c: float(c["eps"]))
    nan = float("nan")
    points = [] if 0.0 in by_eps else [(0.0, float(clean_of(cells).mean()), 0, nan, nan)]
    for e in sorted(by_eps):
        h = worst(by_eps[e])
        if not np.isnan(h["acc"]):
            points.append((e, h["acc"], len(h["attacks"]), h["low"], h["high"]))
    return Curve(r.row, r.key, r.label, tuple(points))


def curves(cells: list[Cell], order: Sequence[str]) -> dict[tuple[str, str, str], list[Panel]]:
    """The panels of every eps chart, keyed by (dataset, model, norm).

    Args:
        cells: identified cell records (:func:`bench.report.identity.identify`) with ``_key``,
            the row as ``dataset/model/defense``.
        order: the row keys in leaderboard order (the lines' order).
    """
    out: dict[tuple[str, str, str], list[Panel]] = {}
    for chart, g in grouped(cells, lambda c: (c["dataset"], c["_model"], c["norm"])).items():
        rows = rows_of(g, order)
        threats = sorted({c["threat"] for c in g}, key=_threat_rank)
        panels = [Panel(t, t if len(threats) > 1 else f"{t} (= the worst case)",
                        tuple(_curve(r, sub) for r in rows
                              if (sub := [c for c in r.cells if c["threat"] == t])),
                        bars=len(threats) == 1)
                  for t in threats]
        if len(threats) > 1:
            panels.append(Panel(WORST, "worst case: every attack and threat",
                                tuple(_curve(r, r.cells) for r in rows), bars=True))
        out[chart] = panels
    return out


def _x_scale(xs: list[float], clean: bool) -> tuple[dict[float, float], list[str], bool]:
    """Positions in a panel (px from its left), tick labels, and whether the scale is ordinal
    (evenly spaced: used when a linear scale would crowd the labels)."""
    labels = ["clean" if clean and x == 0 else format_eps(x) for x in xs]
    pad, inner = 16, _PW - 32
    if len(xs) == 1:
        return {xs[0]: _PW / 2}, labels, False
    lo, hi = xs[0], xs[-1]
    linear = {x: pad + inner * (x - lo) / (hi - lo) for x in xs}
    need = max(text_width(t) for t in labels) + 6
    if min(linear[b] - linear[a] for a, b in zip(xs, xs[1:], strict=False)) >= need:
        return linear, labels, False
    return {x: pad + inner * i / (len(xs) - 1) for i, x in enumerate(xs)}, labels, True


def _styles(panels: list[Panel], baselines: set[str]) -> dict[str, tuple[str, str, str]]:
    """Row -> (colour, marker, dash): the baseline black and dashed, the rest in turn."""
    out: dict[str, tuple[str, str, str]] = {}
    first = {c.row: c.key for p in panels for c in p.curves}
    i = 0
    for k, key in first.items():
        if key in baselines:
            out[k] = (BASELINE, "circle", "5 3")
        else:
            out[k] = (LINES[i % len(LINES)], MARKERS[i % len(MARKERS)], "")
            i += 1
    return out


def _panel(p: Panel, ox: float, oy: float, xpos: dict[float, float], ticks: list[str],
           axis: str, styles: dict[str, tuple[str, str, str]], index: dict[str, int]) -> str:
    """One panel with its plot box's top left at (ox, oy)."""
    out = [text(ox, oy - 9, p.title, extra=' font-weight="600"'),
           percent_axis(ox, oy, _PW, _PH, True, "robust accuracy (%)")]
    for x, label in zip(xpos.values(), ticks, strict=True):
        out += [f'<line x1="{f1(ox + x)}" y1="{f1(oy + _PH)}" x2="{f1(ox + x)}" '
                f'y2="{f1(oy + _PH + 4)}" stroke="#888"/>', text(ox + x, oy + _PH + 15, label,
                                                                 "middle")]
    out.append(text(ox + _PW / 2, oy + _PH + 32, axis, "middle"))
    spacing = min(np.diff(sorted(xpos.values())), default=_PW)
    step = min(3.0, 0.35 * spacing / max(len(p.curves), 1))
    for k, c in enumerate(p.curves):
        dx = (k - (len(p.curves) - 1) / 2) * step
        out.append(_series(c, p, ox + dx, oy, xpos, styles[c.row], index[c.row]))
    return "".join(out)


def _series(c: Curve, p: Panel, x0: float, oy: float, xpos: dict[float, float],
            style: tuple[str, str, str], s: int) -> str:
    """One defense's line in panel ``p`` (``x0``: the panel's left plus the line's sideways
    offset): the path, in the headline's panel the error bars, then the points."""
    color, shape, dash = style
    path, bars, pts = [], [], []
    for e, acc, n, lo, hi in c.points:
        x, y = x0 + xpos[e], oy + _PH * (1 - acc)
        path.append(f"{'L' if path else 'M'}{f1(x)},{f1(y)}")
        ci = p.bars and n > 0 and not math.isnan(lo)
        attrs = f' class="pt" data-eps="{e!r}" data-acc="{acc!r}"'
        if ci:
            bars.append(_error_bar(x, oy + _PH * (1 - lo), oy + _PH * (1 - hi), color, lo, hi))
            attrs += f' data-low="{lo!r}" data-high="{hi!r}"'
        pts.append(marker(shape, x, y, color, attrs,
                          _tip(c, p, e, acc, n, (lo, hi) if ci else None)))
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<g class="series" data-s="{s}" data-row="{esc(c.key)}" '
            f'data-defense="{esc(c.defense)}" data-threat="{esc(p.threat)}">'
            f'<path class="line" d="{"".join(path)}" fill="none" stroke="{color}" '
            f'stroke-width="2"{dashed}><title>{esc(c.defense)}: {esc(p.title)}</title>'
            f'</path>{"".join(bars)}{"".join(pts)}</g>')


def _error_bar(x: float, y_low: float, y_high: float, color: str, low: float,
               high: float) -> str:
    """A vertical bar with end caps from ``y_low`` to ``y_high`` (px) at ``x``."""
    d = (f"M{f1(x)},{f1(y_low)}V{f1(y_high)}M{f1(x - 2.5)},{f1(y_low)}h5"
         f"M{f1(x - 2.5)},{f1(y_high)}h5")
    return (f'<path class="ci" d="{d}" fill="none" stroke="{color}" stroke-width="1.2" '
            f'stroke-opacity="0.6" data-low="{low!r}" data-high="{high!r}"/>')


def _tip(c: Curve, p: Panel, eps: float, acc: float, attacks: int,
         interval: tuple[float, float] | None = None) -> str:
    if attacks == 0:
        return f"{c.defense}: clean accuracy {100 * acc:.1f}%"
    ci = f"; 95% interval {100 * interval[0]:.1f}–{100 * interval[1]:.1f}%" if interval else ""
    return (f"{c.defense}, {p.title}: {100 * acc:.1f}% at eps {format_eps(eps)} "
            f"(worst case over {attacks} attack{'s' * (attacks != 1)}{ci})")


def eps_chart(chart: tuple[str, str, str], panels: list[Panel], baselines: set[str]) -> str:
    """One (dataset, model, norm)'s chart: its panels side by side (three a row) and the legend
    of its defenses at the right; ``baselines``: row keys drawn as the baseline."""
    dataset, model, norm = chart
    xs = sorted({pt[0] for p in panels for c in p.curves for pt in c.points})
    clean = any(pt[2] == 0 for p in panels for c in p.curves for pt in c.points)
    xpos, ticks, ordinal = _x_scale(xs, clean)
    axis = f"eps ({'L∞' if norm == 'linf' else norm})" + (", evenly spaced" if ordinal else "")
    styles = _styles(panels, baselines)
    index = {k: i for i, k in enumerate(styles)}
    pw, ph = _ML + _PW + _MR, _MT + _PH + _MB
    body = [_panel(p, (i % _PER_ROW) * pw + _ML, (i // _PER_ROW) * ph + _MT, xpos, ticks,
                   axis, styles, index) for i, p in enumerate(panels)]
    names = {c.row: (c.defense, c.key) for p in panels for c in p.curves}
    items = [(clipped(names[r][0], 200) + (" (baseline)" if names[r][1] in baselines else ""),
              color, shape, dash, f' data-s="{index[r]}" data-row="{esc(names[r][1])}"')
             for r, (color, shape, dash) in styles.items()]
    lx = min(len(panels), _PER_ROW) * pw + 6
    legend, lh = legend_rows(items, lx, _MT + 14, 0)
    width = lx + max((30 + text_width(t[0]) + 14 for t in items), default=0)
    height = max(-(-len(panels) // _PER_ROW) * ph, _MT + 14 + lh) + 4
    body.append(text(lx, _MT - 2, "defense", extra=' font-weight="600"') + legend)
    label = f"Robust accuracy against eps: {dataset} / {model} ({norm})"
    return svg(width, height, "".join(body), label, "eps-chart",
               f' data-dataset="{esc(dataset)}" data-model="{esc(model)}" '
               f'data-norm="{esc(norm)}"')


def _names(cells: list[Cell]) -> dict[str, str]:
    """A broken-by label (a column, or ``column:member``) -> its category in the breakdown
    chart: the attack and threat (and settings), without the eps that every bar holds."""
    out = {CLEAN: CLEAN}
    for c in cells:
        name = f"{c['attack']}/{c['threat']}" + str(c["_label"])[len(str(c["_column_base"])):]
        out[str(c["_label"])] = name
        for m in suite_members(c["metadata"]):
            out[f"{c['_label']}:{m['label']}"] = f"{name}:{m['label']}"
    return out


def bars(cells: list[Cell], order: Sequence[str]) -> dict[tuple[str, str], list[Bar]]:
    """The breakdown chart's bars per (dataset, model), rows in ``order`` then eps ascending."""
    out: dict[tuple[str, str], list[Bar]] = {}
    for r in rows_of(cells, order):
        names, rc = _names(r.cells), r.cells
        for e, g in sorted(grouped(rc, lambda c: float(c["eps"])).items()):
            h = worst(g)
            segments = [("robust", int(h["robust"].sum()))]
            segments += [(names.get(label, label), count) for label, count in
                         h["broken_by"].items() if count]
            out.setdefault((str(rc[0]["dataset"]), str(rc[0]["_model"])), []).append(
                Bar(r.row, r.key, r.label, e, int(h["n"]), tuple(segments)))
    return out


def _colors(all_bars: list[Bar]) -> dict[str, str]:
    cats = list(dict.fromkeys(c for b in all_bars for c, _ in b.segments))
    attacks = [c for c in cats if c not in ("robust", CLEAN)]
    return {"robust": ROBUST, CLEAN: WRONG_CLEAN,
            **{c: SEGMENTS[i % len(SEGMENTS)] for i, c in enumerate(attacks)}}


def breakdown_chart(block: tuple[str, str], rows: list[Bar]) -> str:
    """One (dataset, model)'s stacked bars: one a row and eps, 0-100 % of its n images."""
    colors = _colors(rows)
    label_w = min(max(text_width(b.defense, _BOLD) for b in rows) + 10, 220)
    eps_w = max(text_width(f"@{format_eps(b.eps)}") for b in rows) + 10
    x0 = label_w + eps_w
    shown = {"robust": "robust (the worst case)", CLEAN: "wrong clean"}
    items = [(shown.get(c, c), color, None, "", f' data-cat="{esc(c)}"')
             for c, color in colors.items() if any(c == s for b in rows for s, _ in b.segments)]
    legend, lh = legend_rows(items, 4, 12, x0 + _BAR_W)
    top = lh + 14
    y, out, last = top + 2, [], None
    for b in rows:
        if last is not None and b.row != last:
            y += _GROUP_GAP
        if b.row != last:
            out.append(text(4, y + _BAR_H - 3, clipped(b.defense, label_w - 8, _BOLD),
                            extra=' font-weight="600"'))
        out.append(text(x0 - 4, y + _BAR_H - 3, f"@{format_eps(b.eps)}", "end"))
        x, segs = float(x0), []
        for cat, count in b.segments:
            w = _BAR_W * count / max(b.n, 1)
            tip = (f"{b.defense} @{format_eps(b.eps)}: {shown.get(cat, cat)}, {count} of "
                   f"{b.n} images ({100 * count / max(b.n, 1):.1f}%)")
            segs.append(f'<rect class="seg" x="{f1(x)}" y="{f1(y)}" width="{f1(w)}" '
                        f'height="{_BAR_H}" fill="{colors[cat]}" data-cat="{esc(cat)}" '
                        f'data-count="{count}"><title>{esc(tip)}</title></rect>')
            if w >= 28:
                segs.append(text(x + w / 2, y + _BAR_H - 3, f"{100 * count / b.n:.0f}",
                                 "middle", 9.5, f' fill="{ink(colors[cat])}"'))
            x += w
        out.append(f'<g class="bar" data-row="{esc(b.key)}" data-eps="{b.eps!r}" '
                   f'data-n="{b.n}">{"".join(segs)}</g>')
        last, y = b.row, y + _BAR_H + _BAR_GAP
    axis = percent_axis(x0, top, _BAR_W, y - top, False, "share of the images (%)")
    label = f"Which attack broke the images first: {block[0]} / {block[1]}"
    return svg(x0 + _BAR_W + 16, y + 36, legend + axis + "".join(out), label,
               "breakdown-chart", f' data-dataset="{esc(block[0])}" '
                                  f'data-model="{esc(block[1])}"')


def eps_section(cells: list[Cell], order: Sequence[str], baselines: set[str]) -> str:
    """The page's section of eps charts (empty without cells)."""
    charts = curves(cells, order)
    if not charts:
        return ""
    figures = "".join(f'<figure class="chart-figure"><figcaption>{esc(k[0])} / {esc(k[1])} '
                      f"({esc(k[2])})</figcaption>{eps_chart(k, p, baselines)}</figure>"
                      for k, p in charts.items())
    return ('<h2 id="charts">Robust accuracy against eps</h2><p class="note">One panel per '
            "threat model, one line per defense; each point is the per-image worst case over "
            "the attacks of that threat at that eps (the last panel: over every attack and "
            "threat, the headline, each point with its 95% Wilson interval over the n images "
            "as a bar), and the point at the left is the clean accuracy. Points "
            "of one eps are set slightly apart sideways so that equal values stay visible; "
            "hover a point for its number, a line or a legend entry to pick it out.</p>"
            + figures)


def breakdown_figures(cells: list[Cell], order: Sequence[str]) -> str:
    """The breakdown charts, one per (dataset, model)."""
    return "".join(f'<figure class="chart-figure"><figcaption>{esc(k[0])} / {esc(k[1])}'
                   f"</figcaption>{breakdown_chart(k, b)}</figure>"
                   for k, b in bars(cells, order).items())
