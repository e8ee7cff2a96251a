"""Inline-SVG primitives for the leaderboard page's charts (:mod:`bench.report.charts`): the
colour-blind-safe palettes, point markers, axes, legends and the ``<svg>`` element itself.

Every function returns markup that is valid XML as well as HTML (text escaped, attributes
quoted), so a test can parse a chart with :mod:`xml.etree.ElementTree`. Nothing is loaded: no
font, no stylesheet, no script.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.report._html import esc

FONT = 11  # px: tick labels, legends
# Okabe & Ito (2008) without yellow (too light on white), then Paul Tol's muted scheme: each
# colour tells apart from the others under the common colour-vision deficiencies; black is kept
# for the baseline.
LINES = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#882255",
         "#999933", "#44AA99", "#332288", "#AA4499", "#661100")
BASELINE = "#000000"
ROBUST, WRONG_CLEAN = "#009E73", "#BBBBBB"  # the breakdown's two fixed categories
SEGMENTS = ("#D55E00", "#0072B2", "#E69F00", "#CC79A7", "#56B4E9", "#882255", "#999933",
            "#332288", "#AA4499", "#44AA99", "#661100", "#6699CC")
# A second cue beside the colour, so that lines stay apart in grey print and for any reader.
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down", "plus")


def f1(x: float) -> str:
    """A coordinate with one decimal (compact, stable output)."""
    return f"{x:.1f}"


def text_width(text: str, size: float = FONT) -> float:
    """A generous estimate of ``text``'s rendered width in px (no font metrics offline)."""
    return 0.62 * size * len(text)


def clip(text: str, width: float, size: float = FONT) -> str:
    """``text`` cut with an ellipsis to fit ``width`` px (by :func:`text_width`)."""
    most = max(int(width / (0.62 * size)), 2)
    return text if len(text) <= most else text[:most - 1] + "…"


def ink(fill: str) -> str:
    """Black or white, whichever reads better on ``fill`` (``#rrggbb``)."""
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"


def marker(shape: str, x: float, y: float, color: str, attrs: str = "", tip: str = "",
           r: float = 3.6) -> str:
    """A point marker of ``shape`` (:data:`MARKERS`) at (x, y); ``attrs``: extra attributes,
    ``tip``: its tooltip (an SVG ``<title>``)."""
    title = f"<title>{esc(tip)}</title>" if tip else ""
    paint = f'fill="{color}" stroke="#fff" stroke-width="0.8"'
    if shape == "circle":
        return f'<circle cx="{f1(x)}" cy="{f1(y)}" r="{r}" {paint}{attrs}>{title}</circle>'
    s = r * 1.1
    d = {
        "square": f"M{f1(x - s)},{f1(y - s)}h{f1(2 * s)}v{f1(2 * s)}h{f1(-2 * s)}z",
        "triangle": f"M{f1(x)},{f1(y - 1.3 * s)}L{f1(x + 1.2 * s)},{f1(y + s)}"
                    f"L{f1(x - 1.2 * s)},{f1(y + s)}z",
        "triangle-down": f"M{f1(x)},{f1(y + 1.3 * s)}L{f1(x + 1.2 * s)},{f1(y - s)}"
                         f"L{f1(x - 1.2 * s)},{f1(y - s)}z",
        "diamond": f"M{f1(x)},{f1(y - 1.4 * s)}L{f1(x + 1.2 * s)},{f1(y)}L{f1(x)},"
                   f"{f1(y + 1.4 * s)}L{f1(x - 1.2 * s)},{f1(y)}z",
        "plus": f"M{f1(x - 0.4 * s)},{f1(y - 1.3 * s)}h{f1(0.8 * s)}v{f1(0.9 * s)}"
                f"h{f1(0.9 * s)}v{f1(0.8 * s)}h{f1(-0.9 * s)}v{f1(0.9 * s)}h{f1(-0.8 * s)}"
                f"v{f1(-0.9 * s)}h{f1(-0.9 * s)}v{f1(-0.8 * s)}h{f1(0.9 * s)}z",
    }[shape]
    return f'<path d="{d}" {paint}{attrs}>{title}</path>'


def text(x: float, y: float, content: str, anchor: str = "start", size: float = FONT,
         extra: str = "") -> str:
    """A text label (escaped) with its baseline at ``y``."""
    return (f'<text x="{f1(x)}" y="{f1(y)}" font-size="{size}" text-anchor="{anchor}"'
            f"{extra}>{esc(content)}</text>")


def percent_axis(x0: float, y0: float, width: float, height: float, vertical: bool,
                 label: str) -> str:
    """A 0-100 % axis with grid lines every 20 points: ``vertical`` on the left edge of the
    plot box (x0, y0, width, height), else along its bottom edge; ``label`` names it."""
    out = []
    for v in range(0, 101, 20):
        if vertical:
            y = y0 + height * (1 - v / 100)
            out += [f'<line x1="{f1(x0)}" y1="{f1(y)}" x2="{f1(x0 + width)}" y2="{f1(y)}" '
                    f'class="grid" stroke="#e4e4e4"/>', text(x0 - 5, y + 3.5, str(v), "end")]
        else:
            x = x0 + width * v / 100
            out += [f'<line x1="{f1(x)}" y1="{f1(y0)}" x2="{f1(x)}" y2="{f1(y0 + height)}" '
                    f'class="grid" stroke="#e4e4e4"/>', text(x, y0 + height + 13, str(v), "middle")]
    if vertical:
        cx, cy = x0 - 34, y0 + height / 2
        out.append(text(cx, cy, label, "middle",
                        extra=f' transform="rotate(-90 {f1(cx)} {f1(cy)})"'))
    else:
        out.append(text(x0 + width / 2, y0 + height + 28, label, "middle"))
    out.append(f'<rect x="{f1(x0)}" y="{f1(y0)}" width="{f1(width)}" height="{f1(height)}" '
               f'class="frame" fill="none" stroke="#888"/>')
    return "".join(out)


def swatch(x: float, y: float, color: str, shape: str | None = None, dash: str = "") -> str:
    """A legend key centred at (x, y): a short line with a marker, or a filled box."""
    if shape is None:
        return f'<rect x="{f1(x - 6)}" y="{f1(y - 5)}" width="12" height="10" fill="{color}"/>'
    style = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{f1(x - 11)}" y1="{f1(y)}" x2="{f1(x + 11)}" y2="{f1(y)}" '
            f'stroke="{color}" stroke-width="2"{style}/>' + marker(shape, x, y, color))


def legend_rows(items: Sequence[tuple[str, str, str | None, str, str]], x: float, y: float,
                width: float) -> tuple[str, float]:
    """Legend entries ``(label, color, marker or None, dash, attributes)`` laid out left to
    right from (x, y), wrapping at ``width`` (0: one entry a line); returns the markup and the
    height used."""
    out, cx, cy = [], x, y
    for label, color, shape, dash, attrs in items:
        w = 30 + text_width(label) + 14
        if cx > x and (not width or cx + w > x + width):
            cx, cy = x, cy + 18
        out.append(f'<g class="legend-item"{attrs}>{swatch(cx + 12, cy, color, shape, dash)}'
                   f"{text(cx + 28, cy + 4, label)}</g>")
        cx += w
    return "".join(out), cy - y + 18


def svg(width: float, height: float, body: str, label: str, cls: str, attrs: str = "") -> str:
    """The ``<svg>`` element (``label``: its accessible name, also its ``<title>``); inline in
    HTML, it needs no namespace declaration (and so names no URL)."""
    return (f'<svg class="chart {cls}" role="img" '
            f'width="{int(width)}" height="{int(height)}" viewBox="0 0 {int(width)} '
            f'{int(height)}" aria-label="{esc(label)}" font-family="system-ui, sans-serif"'
            f"{attrs}><title>{esc(label)}</title>{body}</svg>")
