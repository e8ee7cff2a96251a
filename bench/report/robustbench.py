"""Leaderboard rows as RobustBench model-info files: ``model_info/<dataset>/<Linf|L2>/<name>.json``,
the layout and field set of RobustBench's own ``model_info`` folder (and of what its
``benchmark(..., to_disk=True)`` writes), so its leaderboard tools read them.

One file per (row, norm, eps): a RobustBench entry holds one eps. The fields, in RobustBench's
order, and where each comes from:

- ``clean_acc``: the row's clean accuracy at that eps, in percent with two decimals, as a string
  (RobustBench writes its numbers so);
- ``autoattack_acc`` (the field of the headline number): the per-image worst case over every
  attack and threat model stored for the row at that eps (:mod:`bench.report.headline`), the
  footnote naming the attacks (it is AutoAttack's number only where AutoAttack is the one) and
  giving the number's 95% Wilson interval over the n images (:mod:`bench.report.interval`);
- ``eps``: as RobustBench writes it (``"8/255"``, ``"0.3"``); ``dataset``: the dataset's name;
  the threat model (``Linf``, ``L2``) is the folder, as in RobustBench;
- ``number_forward_passes``: forward passes of the defended model per prediction, as the store
  records them: the evaluation draws of a randomized defense (``eval_draws``), 1 where a cell
  records none (cells record the draws whenever there is more than one);
- ``unreliable``: true when a gradient-masking flag is raised for the row
  (:mod:`bench.report.flags`, listed in the footnote);
- ``link``, ``name``, ``authors``, ``venue``: the defense's cited paper, read from its module
  docstring (null where it names none; ``name`` then the defense's one-line summary);
  ``architecture``: the defense and the classifier;
- ``reported`` (the paper's own number) and ``additional_data``: null, since no store records
  them.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps
from bench.report.details import citation, paper
from bench.report.headline import Cell, grouped, records, worst
from bench.report.identity import identify
from bench.report.tables import _ordered, _require, leaderboard

FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
          "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc",
          "unreliable", "footnote")
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def threat_model(norm: str) -> str:
    """RobustBench's name of an Lp threat model: ``linf`` -> ``Linf``, ``l2`` -> ``L2``."""
    return "L" + norm[1:] if norm[:1].lower() == "l" else norm


def _safe(text: str) -> str:
    """``text`` as a portable file-name part: runs of other characters than letters, digits,
    ``.`` and ``-`` become ``_`` (``jpeg (quality=50)`` -> ``jpeg_quality_50``)."""
    return _UNSAFE.sub("_", text).strip("_.") or "row"


def forward_passes(cells: list[Cell]) -> int:
    """Forward passes per prediction the cells record: the most evaluation draws any of them
    made (``eval_draws`` in its configuration or metadata), 1 where none records draws."""
    draws = [int(d["eval_draws"]) for c in cells for d in (c["config"], c["metadata"])
             if isinstance(d, dict) and d.get("eval_draws")]
    return max(draws, default=1)


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _footnote(cells: list[Cell], head: dict[str, Any], found: list[dict[str, Any]],
              norm: str) -> str:
    first = cells[0]
    revs = ", ".join(sorted({str(c["git_rev"]) for c in cells}))
    text = (f"Evaluated by bench (git {revs}) on the first {head['n']} {first['split']} images "
            f"of {first['dataset']} under {threat_model(norm)}: autoattack_acc is bench's "
            f"per-image worst case over the {len(head['attacks'])} stored attacks "
            f"({', '.join(head['attacks'])}), an image counting only if it is correct clean and "
            f"under every one; its 95% Wilson score interval over the {head['n']} images is "
            f"{_percent(head['low'])}–{_percent(head['high'])}% (it covers the sampling of the "
            "images, not the randomness of the attacks or of training). number_forward_passes "
            "counts evaluations of the defended model per image, as the cells record them. "
            "reported and additional_data are not recorded.")
    if found:
        text += " Gradient-masking flags raised for this defense: " + "; ".join(
            f"{f.get('code')} ({f.get('title', '')}: {f.get('detail', '')})" for f in found) + "."
    return text


def _entry(cells: list[Cell], norm: str, eps: float, found: list[dict[str, Any]],
           papers: Callable[[str], tuple[str, str]]) -> dict[str, Any]:
    """One model-info dict (keys :data:`FIELDS`) for a row's ``cells`` at one norm and eps."""
    first = cells[0]
    head = worst(cells)
    summary, cite = papers(str(first["defense"]))
    ref = citation(cite)
    defense, model = str(first["_defense"]), str(first["_model"])
    clean = float(np.mean([c["clean_acc"] for c in cells]))
    return {
        "link": ref.link, "name": ref.title or summary or defense, "authors": ref.authors,
        "additional_data": None, "number_forward_passes": forward_passes(cells),
        "dataset": str(first["dataset"]), "venue": ref.venue,
        "architecture": f"{defense} + {model}" if first["defense_kind"] == "preprocessor"
        else defense,
        "eps": format_eps(eps), "clean_acc": _percent(clean), "reported": None,
        "autoattack_acc": _percent(head["acc"]), "unreliable": bool(found),
        "footnote": _footnote(cells, head, found, norm),
    }


def model_infos(df: pd.DataFrame, baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """Every leaderboard row at each of its (norm, eps) as a RobustBench model-info dict.

    Args:
        df: cells as returned by ``Store.frame()``.
        baseline: as in :func:`bench.report.tables.leaderboard` (the rows' order).

    Returns:
        ``model_info/<dataset>/<threat model>/<model>_<defense>_eps<eps>.json`` (a relative
        path; the row's settings in its name, a digest of the row added where two rows' names
        would collide, e.g. rows over different n) -> the dict, keys :data:`FIELDS`, the
        baseline's rows first.

    Raises:
        ConfigError: ``df`` is empty.
    """
    flags = leaderboard(_require(df), baseline).attrs.get("flags") or {}
    cells = records(identify(_ordered(df, baseline)))
    cache: dict[str, tuple[str, str]] = {}

    def papers(name: str) -> tuple[str, str]:
        if name not in cache:
            cache[name] = paper(name)
        return cache[name]

    named: list[tuple[str, str, dict[str, Any]]] = []
    for row, rc in grouped(cells, lambda c: c["_row"]).items():  # never two slices together
        first = rc[0]
        key = f"{first['dataset']}/{first['_model']}/{first['_defense']}"
        for (norm, eps), g in grouped(rc, lambda c: (c["norm"], float(c["eps"]))).items():
            stem = (f"{_safe(str(first['_model']))}_{_safe(str(first['_defense']))}"
                    f"_eps{_safe(format_eps(eps).replace('/', '-'))}")
            path = f"model_info/{_safe(str(first['dataset']))}/{threat_model(norm)}/{stem}"
            named.append((path, f"{row}|{norm}|{eps!r}",
                          _entry(g, norm, eps, flags.get(key, []), papers)))
    paths = Counter(p for p, _, _ in named)
    return {(p if paths[p] == 1 else
             f"{p}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}") + ".json": info
            for p, ident, info in named}
