"""Cell identity in the wide table: which settings tell two stored cells apart, and the labels
that say so (``jpeg (quality=50)``, ``fgsm/oblivious@0.1 (targeted=least-likely)``)."""

from __future__ import annotations

import json
import math
from collections import namedtuple
from typing import Any

import numpy as np
import pandas as pd

from bench.config import format_eps
from bench.store import COLUMN_SETTINGS


def column_label(attack: str, threat: str, eps: float, norm: str | None = None) -> str:
    """The wide table's column name, e.g. ``pgd100/whitebox@8/255`` (``norm`` appended if given)."""
    label = f"{attack}/{threat}@{format_eps(float(eps))}"
    return f"{label} ({norm})" if norm else label


# Settings named in the base labels, or with a column of their own in the wide table.
_COLUMN_BASE = ("attack", "threat", "norm", "eps")
_ROW_BASE = ("dataset", "model", "defense")
_VISIBLE = {*_COLUMN_BASE, *_ROW_BASE, "n"}
_SAME_AS = {"attack_params.seed": "seed"}  # an attack's seed is the run's seed (a row setting)
# Column settings the table marks on the cell itself (EOT draws: the double dagger and the
# page's tooltip); they split a column only when one row holds cells that differ in them.
_MARKED = ("eot",)
_HASHES = ("slice", "classifier", "defense_weights")  # named only when nothing readable differs
_PARTS = "parts."  # a composite's parts' identities: like digests, named only when needed
_MODEL_SIDE = ("model_opts.", "classifier")  # beside the model; the rest beside the defense
# The columns a cell's settings and labels are read from, and the settings taken from columns
# where the stored configuration lacks them (rows written by older versions).
_READ = ("config", "dataset", "split", "n", "model", "defense", "attack", "threat", "norm",
         "seed", "eps", "attack_params", "defense_params")
_FROM_COLUMNS = ("dataset", "split", "n", "model", "defense", "attack", "threat", "norm", "seed")
_Row = namedtuple("_Row", _READ)
# json.dumps(..., default=str) and its canonical (sorted) form, built once, not once a value
_JSON = json.JSONEncoder(default=str)
_CANONICAL = json.JSONEncoder(sort_keys=True, default=str)


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": canonical JSON of the value}``."""
    if isinstance(obj, dict) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: _CANONICAL.encode(obj)}


def _rows(cells: pd.DataFrame) -> list[_Row]:
    """The columns :data:`_READ` of every cell, one named tuple a cell, as Python values (read
    a column at a time: a pandas string column hands out its values one call each)."""
    columns = [cells[c].to_numpy(dtype=object).tolist() for c in _READ]
    return [_Row._make(values) for values in zip(*columns, strict=True)]


def _settings(row: _Row) -> dict[str, str]:
    """Every setting of a cell: its stored configuration, completed from the row's columns (rows
    written by older versions hold less configuration)."""
    flat = _flat(row.config if isinstance(row.config, dict) else {})
    for key in _FROM_COLUMNS:
        if key not in flat:
            flat[key] = _JSON.encode(_native(getattr(row, key)))
    flat["eps"] = json.dumps(float(row.eps))
    for group in ("attack_params", "defense_params"):
        for k, v in _flat(getattr(row, group) or {}, f"{group}.").items():
            flat.setdefault(k, v)
    return {k: v for k, v in flat.items() if k not in _SAME_AS and k != "attack_params"
            and k != "defense_params"}


def _is_column_setting(key: str) -> bool:
    """Attack-side settings (the attack, its parameters, and those a configuration holds only
    where they apply: EOT draws, the transfer source, a suite's members) name columns."""
    return key in _COLUMN_BASE or key.split(".", 1)[0] in COLUMN_SETTINGS


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
    by_group: dict[Any, list[dict[str, str]]] = {}
    for st, g in zip(settings, groups, strict=True):  # one pass: linear in the cells
        by_group.setdefault(g, []).append(st)
    out: dict[Any, list[str]] = {}
    for g, members in by_group.items():
        keys = sorted(k for k in {k for st in members for k in st} if keep(k))  # keep once a key
        out[g] = [k for k in keys if len({st.get(k) for st in members}) > 1]
    return out


def _native(value: Any) -> Any:
    if value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def identify(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with the labels that identify each one in the wide table.

    Adds ``_model`` and ``_defense`` (the row's model and defense, with the settings that
    distinguish the row from others of the same dataset, model and defense), ``_row`` (the row's
    key) and ``_label`` (the column: ``attack/threat@eps`` plus the attack settings that
    distinguish it from other columns of that name). Readable settings are used first; weight
    and data digests, then the config hash, only where cells would otherwise still collide.
    """
    read = _rows(cells)
    settings = [_settings(r) for r in read]
    show_norm = cells["norm"].nunique() > 1
    bases = [column_label(r.attack, r.threat, r.eps, r.norm if show_norm else None)
             for r in read]
    col_keys = _varying(settings, bases, lambda k: _is_column_setting(k) and k not in _VISIBLE)
    row_bases = [(r.dataset, r.model, r.defense) for r in read]
    within = _varying(settings, list(zip(row_bases, bases, strict=True)),
                      lambda k: k in _MARKED)
    for base in col_keys:  # marked settings split a column only where one row needs it
        needed = {k for (_, b), ks in within.items() if b == base for k in ks}
        col_keys[base] = [k for k in col_keys[base] if k not in _MARKED or k in needed]
    labels = [base + (" (" + ", ".join(_show(k, st.get(k, "null")) for k in col_keys[base])
                      + ")" if col_keys[base] else "")
              for base, st in zip(bases, settings, strict=True)]
    for with_hashes in (False, True):
        row_keys = _varying(settings, row_bases, lambda k, h=with_hashes: (
            not _is_column_setting(k) and k not in _ROW_BASE
            and (h or (k not in _HASHES and not k.startswith(_PARTS)))))
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
