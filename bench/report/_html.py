"""Small HTML building blocks shared by the leaderboard page's sections (:mod:`bench.report.page`,
:mod:`bench.report.details`, :mod:`bench.report.plots`): escaping, numbers as the page shows
them, table cells that carry their sort value, sortable tables and flag badges."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML (quotes too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


def num(value: Any) -> float | None:
    """``value`` as a float; None for what is not a number (NaN, None, text)."""
    try:
        return None if math.isnan(out := float(value)) else out
    except (TypeError, ValueError):
        return None


def pct(value: Any) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal; ``–`` where there is none."""
    return "–" if (v := num(value)) is None else f"{100 * v:.1f}"


def cell(text: str, value: Any = None, cls: str = "", title: str = "", tag: str = "td") -> str:
    """One table cell of ready-made HTML ``text``; ``value`` (a number) is what the sort script
    compares (``data-v``), so a shown percentage sorts by the number behind it."""
    v = num(value)
    attrs = (f' data-v="{v!r}"' if v is not None else "") + (f' class="{cls}"' if cls else "") \
        + (f' title="{esc(title)}"' if title else "")
    return f"<{tag}{attrs}>{text}</{tag}>"


def table(table_id: str, head: list[str], rows: Iterable[list[str]], cls: str = "") -> str:
    """A sortable table of ready-made ``<th>`` / ``<td>`` cells (``table_id`` may be empty)."""
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table{ident} class="{f"sortable {cls}".strip()}">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>\n{body}\n</tbody></table></div>")


def flag_badge(f: dict[str, Any], tip: bool = True, cls: str = "flag") -> str:
    """A gradient-masking flag's code as a badge; ``tip``: its title and figures as tooltip."""
    title = f' title="{esc(f.get("title", ""))}: {esc(f.get("detail", ""))}"' if tip else ""
    return f'<span class="{cls}"{title}>{esc(f.get("code", "?"))}</span>'
