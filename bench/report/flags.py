"""Automatic gradient-masking flags: warnings on a leaderboard row, each with its numbers.

The checks of Carlini et al., "On Evaluating Adversarial Robustness" (2019,
https://arxiv.org/abs/1902.06705, sec. 5 and its checklist) and AutoAttack's ``checks.py``,
computed from the stored per-image results of a row (plus the two checks ``bench audit``
stores that are not attack cells: input gradients and determinism). A flag is a warning that
the evaluation may overstate robustness, not a verdict. Every count is over the row's n images,
and an image counts only when the defended model classifies it correctly clean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps
from bench.report.headline import (
    Cell,
    argsort,
    clean_of,
    first_break,
    grouped,
    records,
    suite_members,
)
from bench.store import row_id

SHARE = 0.01  # "more than 1% of images"
POINTS = 0.01  # "more than 1 point"
UNBOUNDED = 1.0  # an L-inf radius that reaches every image in [0,1]
PLANTED_RATE = 0.9  # share of planted examples the suite's gradient attacks must find
PLANTED_MIN = 10  # informative planted tasks needed to decide PT

LEGEND = {
    "SS": "single-step beats iterative: an FGSM-type attack breaks images the iterative gradient "
          "attacks did not (> 1% of images)",
    "NC": "not converged: doubling the iterative attack's steps lowers accuracy by > 1 point",
    "EPS": "not monotone in eps: a larger eps leaves accuracy > 1 point higher",
    "UB": "an unbounded attack (eps = 1) leaves accuracy above chance",
    "BB": "black-box beats white-box: Square, transfer or noise breaks images the gradient "
          "attacks did not (> 1% of images)",
    "ZG": "zero input gradients at the clean images (as the attacker sees the defense) on > 1% "
          "of images: shattered gradients",
    "ND": "the forward pass is not deterministic although the defense declares randomized = "
          "False",
    "WO": "whitebox weaker than oblivious: the oblivious attack breaks images its whitebox "
          "version did not (> 1% of images)",
    "PT": "planted examples not found: the suite's gradient attacks found an adversarial "
          f"example in < {PLANTED_RATE:.0%} of the images where one is planted within eps "
          "(binarization test)",
}
TITLES = {code: text.split(":")[0] for code, text in LEGEND.items()}


def _flag(code: str, detail: str, raised: bool = True, value: float = 0.0) -> dict[str, Any]:
    """A check's finding: its figures (``detail``), whether it raises the flag, and the measured
    quantity (``value``: share of images, or points) that decides it, so a pass has figures too."""
    return {"code": code, "title": TITLES[code], "detail": detail, "raised": bool(raised),
            "value": float(value)}


def _share(k: int, n: int) -> str:
    return f"{k} of {n} images ({100 * k / max(n, 1):.1f}%)"


def _broken(cell: Cell, clean: np.ndarray) -> np.ndarray:
    return clean & ~np.asarray(cell["robust_correct"], dtype=bool)


def _is(cell: Cell, key: str) -> Any:
    meta = cell["metadata"] if isinstance(cell["metadata"], dict) else {}
    return meta.get(key)


SERIES = ("eot", "source")  # settings outside attack_params that make another attack series


def _params(cell: Cell, drop: tuple[str, ...]) -> str:
    """The attack's identity but for ``drop``: its parameters and the settings of
    :data:`SERIES` (an EOT-20 cell and a one-draw cell are two series, not one)."""
    p = cell["attack_params"] if isinstance(cell["attack_params"], dict) else {}
    config = cell["config"] if isinstance(cell.get("config"), dict) else {}
    extra = [(k, repr(config[k])) for k in SERIES if k in config]
    return repr(sorted((k, repr(v)) for k, v in p.items() if k not in drop) + extra)


def _gradient_and_blackbox(cells: list[Cell], clean: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images broken by whitebox gradient attacks, and by black-box ones (gradient-free,
    transfer), with the black-box attacks' names; a suite's members counted as attacks."""
    grad, black, names = np.zeros_like(clean), np.zeros_like(clean), []
    for c in cells:
        members = suite_members(c["metadata"])
        if members:
            code = first_break(c["metadata"])
            for k, m in enumerate(members, start=1):
                bb = m.get("gradient_free") or m.get("threat") == "transfer"
                (black if bb else grad)[...] |= clean & (code == k)
                names += [f"{c['attack']}:{m['label']}"] if bb else []
        elif _is(c, "gradient_free") or c["threat"] == "transfer":
            black |= _broken(c, clean)
            names.append(c["_label"])
        elif c["threat"] == "whitebox":
            grad |= _broken(c, clean)
    return grad, black, names


def _single_step(cells: list[Cell], clean: np.ndarray, n: int) -> Iterator[dict[str, Any]]:
    """SS among the whitebox ``cells`` of one eps (FGSM transferring better than PGD is not
    masking)."""
    single = [c for c in cells if _is(c, "audit_role") == "single-step"]
    iterative = [c for c in cells if not _is(c, "gradient_free")
                 and _is(c, "audit_role") != "single-step" and not suite_members(c["metadata"])]
    if single and iterative:
        left = clean & ~np.logical_or.reduce([_broken(c, clean) for c in iterative])
        k = int((np.logical_or.reduce([_broken(c, clean) for c in single]) & left).sum())
        yield _flag("SS", f"{single[0]['_label']} broke {_share(k, n)} that "
                          f"{', '.join(c['_label'] for c in iterative)} did not (whitebox)",
                    k > SHARE * n, k / max(n, 1))


def _per_eps(cells: list[Cell], clean: np.ndarray, n: int) -> Iterator[dict[str, Any]]:
    """SS, BB and WO: per-image comparisons among the cells of one eps."""
    by_eps = grouped(cells, lambda c: c["eps"])
    for eps in sorted(by_eps):
        e = by_eps[eps]
        at = f" at eps {format_eps(float(eps))}"
        yield from _single_step([c for c in e if c["threat"] == "whitebox"], clean, n)
        grad, black, names = _gradient_and_blackbox(e, clean)
        k = int((black & ~grad).sum())
        if names and grad.any():
            yield _flag("BB", f"{', '.join(dict.fromkeys(names))} broke {_share(k, n)} that "
                              f"the whitebox gradient attacks did not{at}", k > SHARE * n,
                        k / max(n, 1))
        for pair in grouped(e, lambda c: (c["attack"], repr(c["attack_params"]))).values():
            whitebox = [c for c in pair if c["threat"] == "whitebox"]
            for obl in (c for c in pair if c["threat"] == "oblivious"):
                for wb in whitebox:
                    k = int((_broken(obl, clean) & ~_broken(wb, clean)).sum())
                    yield _flag("WO", f"{obl['_label']} broke {_share(k, n)} that "
                                      f"{wb['_label']} did not", k > SHARE * n, k / max(n, 1))


def _convergence(cells: list[Cell]) -> Iterator[dict[str, Any]]:
    """NC: the same attack with twice the steps is more than a point stronger (each cell
    compared with those of its series only: the same attack, threat, eps and parameters but
    steps and step size)."""
    cells = [c for c in cells if isinstance(c["attack_params"], dict)
             and "steps" in c["attack_params"] and not suite_members(c["metadata"])]
    keys, series = [], {}
    for c in cells:
        keys.append(key := (c["attack"], c["threat"], c["eps"], _params(c, ("steps", "alpha"))))
        series.setdefault(key, []).append(c)
    for a, key in zip(cells, keys, strict=True):
        for b in series[key]:
            if b["attack_params"]["steps"] == 2 * a["attack_params"]["steps"]:
                drop = float(a["robust_acc"] - b["robust_acc"])
                yield _flag("NC", f"{a['_label']} {100 * a['robust_acc']:.1f}% -> "
                                  f"{b['attack_params']['steps']} steps "
                                  f"{100 * b['robust_acc']:.1f}%", drop > POINTS, drop)


def _monotone(cells: list[Cell]) -> Iterator[dict[str, Any]]:
    """EPS: accuracy rises with eps for one attack and threat."""
    for s in grouped(cells, lambda c: (c["attack"], c["threat"], _params(c, ("alpha",)))
                     ).values():
        s = [s[i] for i in argsort([c["eps"] for c in s], "quicksort")]  # as sort_values
        acc, eps = [float(c["robust_acc"]) for c in s], [float(c["eps"]) for c in s]
        if len(acc) < 2:
            continue
        rises, low = [], acc[0]
        for a in acc[1:]:  # each accuracy above the lowest at a smaller eps
            rises.append(a - low)
            low = min(low, a)
        rise = max(rises)
        curve = ", ".join(f"{100 * a:.1f}% at eps {format_eps(e)}"
                          for a, e in zip(acc, eps, strict=True))
        yield _flag("EPS", f"{s[0]['attack']}/{s[0]['threat']}: {curve}", rise > POINTS, rise)


def _unbounded(cells: list[Cell], classes: int) -> Iterator[dict[str, Any]]:
    """UB: an attack at eps 1 leaves more than chance."""
    for c in cells:
        if float(c["eps"]) >= UNBOUNDED - 1e-9 and c["threat"] == "whitebox" \
                and _is(c, "audit_role") != "noise":
            yield _flag("UB", f"{c['_label']} leaves {100 * c['robust_acc']:.1f}% "
                              f"(chance {100 / classes:.1f}%)", c["robust_acc"] > 1.0 / classes,
                        float(c["robust_acc"]))


def _stored_checks(checks: dict[str, dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    zg = checks.get("zero_gradients")
    if zg:
        yield _flag("ZG", f"{_share(int(zg['count']), int(zg['n']))} have an all-zero input "
                          f"gradient of the loss ({zg.get('through', 'through the defense')})",
                    zg["value"] > SHARE, float(zg["value"]))
    nd = checks.get("nondeterministic")
    if nd and not nd.get("randomized", False):
        yield _flag("ND", f"{_share(int(nd['count']), int(nd['n']))} get different logits "
                          f"from two forward passes (max difference {nd['max_diff']:.3g})",
                    nd["value"] > 0, float(nd["value"]))
    pt = checks.get("planted")
    if pt and int(pt["informative"]) >= PLANTED_MIN:
        yield _flag("PT", f"the suite's gradient attacks found an adversarial example for "
                          f"{_share(int(pt['found']), int(pt['informative']))} where one is "
                          f"planted within eps ({pt.get('through', 'through the defense')}; "
                          f"{pt['trivial']} trivial and {pt['not_set_up']} unset tasks left "
                          f"out)", pt["value"] < PLANTED_RATE, float(pt["value"]))


def row_findings(g: pd.DataFrame | list[Cell], checks: dict[str, dict[str, Any]],
                 classes: int = 10) -> list[dict[str, Any]]:
    """Every finding of one leaderboard row (its identified cells ``g``, all over the same
    images; a frame or its :func:`~bench.report.headline.records`) and its stored checks, raised
    or not, in :data:`LEGEND` order: ``{"code", "title", "detail", "raised", "value"}``."""
    g = records(g)
    n = int(g[0]["n"])
    clean = clean_of(g)
    found = [*_per_eps(g, clean, n), *_convergence(g), *_monotone(g), *_unbounded(g, classes),
             *_stored_checks(checks, n)]
    order = list(LEGEND)
    return sorted(found, key=lambda f: order.index(f["code"]))


def row_flags(g: pd.DataFrame | list[Cell], checks: dict[str, dict[str, Any]],
              classes: int = 10) -> list[dict[str, Any]]:
    """The raised flags of one row (:func:`row_findings`); each ``{"code", "title",
    "detail"}`` (and ``raised``, ``value``)."""
    return [f for f in row_findings(g, checks, classes) if f["raised"]]


def _steps(cell: Cell) -> Any:
    return cell["attack_params"].get("steps") if isinstance(cell["attack_params"], dict) else None


def _present(value: Any) -> bool:
    """Not missing (``Series.dropna``'s None and NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def not_applicable(g: pd.DataFrame | list[Cell], checks: dict[str, dict[str, Any]]
                   ) -> dict[str, str]:
    """The checks that the row's cells (a frame or its records) and stored checks cannot
    decide, with the reason (a check with nothing to look at must not read as passed)."""
    g = records(g)
    role = [_is(c, "audit_role") for c in g]
    wb = [c["threat"] == "whitebox" for c in g]
    steps = [s for s in map(_steps, g) if _present(s)]
    eps_of: dict[tuple[Any, Any], set[Any]] = {}
    for c in g:
        eps_of.setdefault((c["attack"], c["threat"]), set()).add(c["eps"])
    out = {}
    if not any(r == "single-step" and w for r, w in zip(role, wb, strict=True)) \
            or not any(r != "single-step" and w for r, w in zip(role, wb, strict=True)):
        out["SS"] = "needs a single-step and an iterative whitebox attack"
    if not any(2 * a in set(steps) for a in steps):
        out["NC"] = "needs the same attack with twice the steps"
    if max(map(len, eps_of.values())) < 2:
        out["EPS"] = "needs one attack at two eps"
    if not any(float(c["eps"]) >= UNBOUNDED - 1e-9 for c in g):
        out["UB"] = "needs an attack at eps 1"
    if not any(wb):
        out["BB"] = "needs whitebox gradient attacks"
    if not ({c["threat"] for c in g} >= {"oblivious", "whitebox"}):
        out["WO"] = "needs an attack under both oblivious and whitebox"
    if "zero_gradients" not in checks:
        out["ZG"] = "not measured (run bench audit)"
    nd = checks.get("nondeterministic")
    if nd is None:
        out["ND"] = "not measured (run bench audit)"
    elif nd.get("randomized"):
        out["ND"] = "the defense declares itself randomized"
    pt = checks.get("planted")
    if pt is None:
        out["PT"] = "not measured (run bench audit)"
    elif int(pt["informative"]) < PLANTED_MIN:
        out["PT"] = (f"{pt['informative']} informative planted tasks of {pt['n']} images, "
                     f"needs {PLANTED_MIN}: raise --planted-n")
    return out


def _row_checks(g: list[Cell], checks: dict[str, dict[str, dict[str, Any]]]
                ) -> dict[str, Any]:
    stored: dict[str, Any] = {}
    if not checks:  # nothing stored: no row identity to compute
        return stored
    for config in (c["config"] for c in g):
        stored.update(checks.get(row_id(config), {}) if isinstance(config, dict) else {})
    return stored


def _classes(dataset: str) -> int:
    try:
        from bench.data import get_dataset

        return int(get_dataset(dataset).info.num_classes)
    except Exception:  # noqa: BLE001  (a dataset no longer registered: assume 10)
        return 10


def _per_row(cells: pd.DataFrame | list[Cell], checks: dict[str, dict[str, dict[str, Any]]],
             each: Any) -> dict[str, Any]:
    """Row key (``dataset/model/defense`` as shown) -> ``each(records of the row's cells, its
    stored checks, its dataset's classes)``, for identified ``cells`` (a frame or its records),
    the rows in order of first appearance."""
    out, classes = {}, {}
    for g in grouped(records(cells), lambda c: c["_row"]).values():
        first = g[0]
        key = f"{first['dataset']}/{first['_model']}/{first['_defense']}"
        if first["dataset"] not in classes:  # one registry look-up per dataset, not per row
            classes[first["dataset"]] = _classes(first["dataset"])
        out[key] = each(g, _row_checks(g, checks), classes[first["dataset"]])
    return out


def flags(cells: pd.DataFrame | list[Cell], checks: dict[str, dict[str, dict[str, Any]]]
          ) -> dict[str, list[dict[str, Any]]]:
    """Row key -> its raised flags (:func:`row_flags`), for identified ``cells``; ``checks``
    as :meth:`bench.store.Store.checks` returns them."""
    return _per_row(cells, checks, row_flags)


def findings(cells: pd.DataFrame | list[Cell], checks: dict[str, dict[str, dict[str, Any]]]
             ) -> dict[str, list[dict[str, Any]]]:
    """Row key -> every finding of the row, raised or not (:func:`row_findings`)."""
    return _per_row(cells, checks, row_findings)


def undecided(cells: pd.DataFrame | list[Cell], checks: dict[str, dict[str, dict[str, Any]]]
              ) -> dict[str, dict[str, str]]:
    """Row key -> :func:`not_applicable` for identified ``cells``."""
    return _per_row(cells, checks, lambda g, c, _: not_applicable(g, c))
