"""One leaderboard row's detail view on the page (:mod:`bench.report.page`): its paper (read from
the registered defense's docstrings), resolved parameters, what was scaled down from the paper,
training and classifier facts, provenance (git revision, versions, seed, n, device) and its
cells; and :func:`paper` / :func:`citation`, which the RobustBench export reads too."""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from bench.errors import BenchError
from bench.report._html import cell, esc, flag_badge, pct, table
from bench.report.headline import Cell

Marks = dict[tuple[str, str], dict[str, str]]  # (row key, column) -> {mark: tooltip}
URL = re.compile(r"https?://[^\s);\]]+")
_SENTENCE_END = re.compile(r"(?<=\.)(?<!\bal\.)\s+(?=[A-Z])")  # not after "et al."
_CITATION = re.compile(r'Papers?:\s*(?P<authors>[^";]*?),?\s*"(?P<title>[^"]+)",?'
                       r'\s*(?P<venue>[^(;"]*)(?:\((?P<link>https?://[^\s;)]+))?')


class Citation(NamedTuple):
    """The first paper a defense's module docstring cites; None where it does not say."""

    authors: str | None
    title: str | None
    venue: str | None
    link: str | None


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


def citation(text: str) -> Citation:
    """The parts of a :func:`paper` citation written as the defenses write them (``Paper:
    AUTHORS, "TITLE", VENUE YEAR (URL)``); the link alone, or nothing, where it is not."""
    m = _CITATION.match(text)
    if m is None:
        link = URL.search(text)
        return Citation(None, None, None, link.group() if link else None)
    return Citation(m["authors"].strip() or None, m["title"].strip(),
                    m["venue"].strip(" ,.") or None, m["link"])


def _linked(text: str) -> str:
    """``text`` escaped, its URLs as links (followed only when clicked)."""
    parts, pos = [], 0
    for m in URL.finditer(text):
        url = esc(m.group())
        parts += [esc(text[pos:m.start()]), f'<a href="{url}" rel="noreferrer">{url}</a>']
        pos = m.end()
    return "".join(parts) + esc(text[pos:])


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
    return " ".join(f"<code>{esc(k)}={esc(' | '.join(v))}</code>" for k, v in values.items()) \
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
    text = "; ".join(f"{k} {esc(v)}" for k, v in facts.items() if v)
    return f"{text}<br>versions: {_codes(_merged(c['versions'] for c in g))}"


def _row_cells(g: list[Cell], marks: Marks) -> str:
    """The row's cells: what ran, how, and what it scored."""
    th = [cell(h, tag="th") for h in ("column", "robust (%)", "clean (%)", "marks",
                                       "suite members", "wall (s)")]
    rows = []
    for c in g:
        m = marks.get((c["_key"], c["_label"]), {})
        members = (c["metadata"].get("suite") or {}).get("members", []) \
            if isinstance(c["metadata"], dict) else []
        rows.append([cell(esc(c["_label"]), cls="name"),
                     cell(pct(c["robust_acc"]), c["robust_acc"]),
                     cell(pct(c["clean_acc"]), c["clean_acc"]),
                     cell(esc("; ".join(m.values()))),
                     cell(esc(", ".join(str(x.get("label", x)) if isinstance(x, dict) else
                                        str(x) for x in members)), cls="text"),
                     cell(f"{float(c['wall_time']):.1f}", c["wall_time"])])
    return table("", th, rows, "row-cells")


def detail(i: int, key: str, r: dict[str, Any], g: list[Cell], found: list[dict[str, Any]],
           marks: Marks, heads: dict[str, list[str]], papers: dict[str, tuple[str, str]]) -> str:
    """Row ``i``'s detail view (``key``: ``dataset/model/defense`` as shown; ``r``: its wide
    table record; ``g``: its cells' records; ``found``: its flags; ``heads``: each headline
    column -> its interval's low and high columns); ``papers``: :func:`paper` of each defense
    name, filled as met (one registry look-up per defense, not per row)."""
    name = str(g[0]["defense"])
    if name not in papers:
        papers[name] = paper(name)
    summary, cite = papers[name]
    scores = ", ".join(f"{h} {pct(r[h])}% ({pct(r[lo])}–{pct(r[hi])})"
                       for h, (lo, hi) in heads.items())
    codes = " ".join(flag_badge(f, False) for f in found)
    flag_items = "".join(f'<li>{flag_badge(f, False)} {esc(f.get("title", ""))}: '
                         f'{esc(f.get("detail", ""))}</li>' for f in found)
    facts = [
        ("Paper", (esc(summary) + (f"<br>{_linked(cite)}" if cite else ""))
         or "not a registered defense now"),
        ("Flags", f"<ul>{flag_items}</ul>" if found else ""),
        ("Parameters", _codes(_merged(c["defense_params"] for c in g))),
        ("Scaled down", "<br>".join(map(esc, _scaled(g))) or "nothing recorded"),
        ("Training", _codes(_scalars([c["metadata"] for c in g], "fit"), "")),
        ("Classifier", _codes(_scalars([c["metadata"] for c in g], "classifier"), "")),
        ("Provenance", _provenance(g)),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v)
    return (f'<details class="defense" id="row-{i}"><summary><b>{esc(key)}</b> '
            f"<span class=\"score\">{esc(scores)}</span> {codes}</summary>"
            f"<dl>{dl}</dl>{_row_cells(g, marks)}</details>")
