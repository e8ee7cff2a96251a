"""Accuracy against one swept parameter: eps, a defense's constructor option, or an attack's option.

The parameter is written ``eps``, ``DEFENSE.OPTION`` (e.g. ``bitdepth.bits``: every value is its
own defense, trained again where the defense trains) or ``ATTACK.OPTION`` (e.g. ``pgd10.steps``:
accuracy against attack iterations). Each value becomes a :class:`~bench.config.RunConfig` that
differs from the base one in that single setting and runs through :func:`~bench.executors.run_grid`,
so its cells go to the result store, cells already stored are skipped (the config hash holds the
resolved defense and attack parameters, so each value is its own cell) and an interrupted sweep
resumes. The plot shows robust accuracy against the value, one line per (defense, threat) (and
per attack and eps when several are given); for a defense option the clean accuracy of each
defense is drawn dashed. The undefended baseline the runner always adds is shown too.

Example::

    python -m bench plot sweep --defense bitdepth --param bitdepth.bits --values 1,2,4,8 \\
        --attack fgsm --eps 0.2
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.figures import file_stem, save_figure
from bench.cache import Cache
from bench.config import RunConfig, format_eps, parse_eps, split_list
from bench.errors import ConfigError
from bench.executors import run_grid
from bench.plan import Planner, validate_names
from bench.registry import ATTACKS, DEFENSES, natural_key
from bench.runtime import progress
from bench.signature import accepted_options
from bench.store import Store
from bench.threat import Threat

RESERVED = {"defense": ("input_shape", "num_classes"), "attack": ("eps", "seed")}
CSV_COLUMNS = ("dataset", "model", "defense", "attack", "threat", "eps", "param", "value", "n",
               "clean_acc", "robust_acc", "bpda", "config_hash")
THREAT_STYLE = {Threat.OBLIVIOUS.value: ("o", "-"), Threat.WHITEBOX.value: ("s", "-.")}


@dataclass(frozen=True)
class SweepParam:
    """What a sweep varies: ``eps``, or ``option`` of the defense or attack ``plugin``.

    Attributes:
        text: as written on the command line (``eps``, ``bitdepth.bits``, ``pgd10.steps``).
        scope: ``eps``, ``defense`` or ``attack``.
        plugin: the defense or attack whose option is swept ("" for eps).
        option: its constructor option ("" for eps).
    """

    text: str
    scope: str
    plugin: str = ""
    option: str = ""

    def apply(self, cfg: RunConfig, value: Any) -> RunConfig:
        """``cfg`` with this parameter set to ``value`` (the swept value wins over any
        ``--defense-opt``/``--attack-opt`` naming the same option)."""
        if self.scope == "eps":
            return replace(cfg, eps=(value,))
        key = f"{self.plugin}.{self.option}"
        field = "defense_opts" if self.scope == "defense" else "attack_opts"
        opts = {k: v for k, v in getattr(cfg, field).items() if k != key}
        return replace(cfg, **{field: {**opts, key: value}})


def parse_param(text: str, cfg: RunConfig) -> SweepParam:
    """Parse ``--param`` against the grid ``cfg`` (its defenses and attacks); one-line
    ConfigErrors say what to write instead."""
    validate_names(cfg)
    text = text.strip()
    if text == "eps":
        if cfg.eps:
            raise ConfigError("--param eps takes its values from --values: drop --eps.")
        return SweepParam(text, "eps")
    plugin, dot, option = text.rpartition(".")
    if not (dot and plugin and option):
        raise ConfigError(f"--param {text!r}: write eps, DEFENSE.OPTION (e.g. bitdepth.bits) or "
                          f"ATTACK.OPTION (e.g. pgd10.steps).")
    in_defenses, in_attacks = plugin in cfg.defenses, plugin in cfg.attacks
    if in_defenses == in_attacks:
        why = "both a --defense and an --attack" if in_defenses else "not in --defense or --attack"
        raise ConfigError(f"--param {text}: '{plugin}' is {why}; write the option of one of "
                          f"--defense {','.join(cfg.defenses)} or --attack "
                          f"{','.join(cfg.attacks)}.")
    scope = "defense" if in_defenses else "attack"
    if option in RESERVED[scope]:
        fix = "sweep eps with --param eps" if option == "eps" else "sweep another option"
        raise ConfigError(f"--param {text}: the harness sets {option} itself; {fix}.")
    takes = accepted_options((DEFENSES if in_defenses else ATTACKS).get(plugin).builder)
    if takes is not None and option not in takes:
        close = difflib.get_close_matches(option, list(takes), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"--param {text}: '{plugin}' takes no option {option}.{hint} It "
                          f"accepts: {', '.join(takes)}.")
    return SweepParam(text, scope, plugin, option)


def parse_values(param: SweepParam, text: str) -> dict[str, Any]:
    """``--values`` as {label: value}, in the given order: eps values parsed as eps (``8/255``),
    others as JSON when they parse (``4``, ``0.5``, ``true``), else as text."""
    items = list(dict.fromkeys(split_list(text)))
    if not items:
        raise ConfigError(f"--values {text!r} is empty: give a comma list, e.g. 1,2,4,8.")
    if param.scope == "eps":
        values = [parse_eps(v) for v in items]
        return {format_eps(v): v for v in values}
    out = {}
    for item in items:
        try:
            out[item] = json.loads(item)
        except json.JSONDecodeError:
            out[item] = item
    return out


def run_sweep(base: RunConfig, param: SweepParam, values: dict[str, Any], store: Store,
              cache: Cache | None = None) -> pd.DataFrame:
    """Run (or read back) every cell of the sweep; return one row per (value, cell).

    Returns:
        Columns :data:`CSV_COLUMNS` plus ``label`` (the value as written) and ``position`` (its
        index), ordered by dataset, model, defense (baseline first), attack, threat, position.
        Accuracies are the store's, in [0, 1].
    """
    cache = cache or Cache()
    frames, order = [], []
    for i, (label, value) in enumerate(progress(list(values.items()),
                                                desc=f"sweep {param.text}")):
        cfg = param.apply(base, value)
        hashes = run_grid(cfg, store, cache)
        order = order or Planner(cfg, cache).defenses()
        df = store.frame(hashes)
        frames.append(df.assign(param=param.text, value=[value] * len(df), label=label,
                                position=i))
    table = pd.concat(frames, ignore_index=True)
    defenses = {d: i for i, d in enumerate(order)}
    attacks = {a: i for i, a in enumerate(sorted(set(table["attack"]), key=natural_key))}
    threats = {t.value: i for i, t in enumerate(Threat)}
    table = table.assign(_d=table["defense"].map(defenses), _a=table["attack"].map(attacks),
                         _t=table["threat"].map(threats))
    table = table.sort_values(["dataset", "model", "_d", "_a", "_t", "eps", "position"],
                              kind="stable")
    return table[[*CSV_COLUMNS, "label", "position"]].reset_index(drop=True)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values)


def _series_label(key: dict[str, Any], varies: list[str]) -> str:
    parts = [str(key["defense"])] + [f"{k}={format_eps(key[k]) if k == 'eps' else key[k]}"
                                     for k in varies]
    return " ".join(parts)


def plot_sweep(table: pd.DataFrame, param: SweepParam, out_dir: str | Path) -> list[Path]:
    """Plot accuracy (%) against the swept value, one figure per (dataset, model).

    Args:
        table: :func:`run_sweep`'s rows.
        param: the swept parameter (its scope decides whether clean accuracy is drawn).
        out_dir: directory to write to (created).

    Returns:
        For each (dataset, model): ``sweep-<dataset>-<model>-<param>-<attacks>`` ``.png``,
        ``.svg`` and ``.csv`` (the rows of ``table``, columns :data:`CSV_COLUMNS`).
    """
    paths: list[Path] = []
    for (ds, model), g in table.groupby(["dataset", "model"], sort=False):
        attacks = list(dict.fromkeys(g["attack"]))
        stem = file_stem("sweep", ds, model, param.text, *attacks)
        fig = _sweep_figure(g, param, f"{ds}/{model}")
        paths += save_figure(fig, out_dir, stem)
        csv = Path(out_dir) / f"{stem}.csv"
        g[list(CSV_COLUMNS)].to_csv(csv, index=False)
        paths.append(csv)
    return paths


def _sweep_figure(g: pd.DataFrame, param: SweepParam, where: str) -> Any:
    from matplotlib.figure import Figure

    points = g.drop_duplicates("position").sort_values("position")
    numeric = _numeric(list(points["value"]))
    xs = {p: (float(v) if numeric else p) for p, v in zip(points["position"], points["value"],
                                                          strict=True)}
    keys = ["defense", "attack"] + ([] if param.scope == "eps" else ["eps"])
    varies = [k for k in keys[1:] if g[k].nunique() > 1]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    colors: dict[str, Any] = {}
    for key, s in g.groupby(keys, sort=False):
        name = _series_label(dict(zip(keys, key, strict=True)), varies)
        color = colors.setdefault(name, f"C{len(colors) % 10}")
        lines = {t: t_rows.sort_values("position") for t, t_rows in s.groupby("threat", sort=False)}
        curves = [tuple(r["robust_acc"]) for r in lines.values()]
        if len(lines) > 1 and len(set(curves)) == 1:  # e.g. the baseline: both threats alike
            lines = {" = ".join(lines): next(iter(lines.values()))}
        for threat, rows in lines.items():
            marker, style = THREAT_STYLE.get(threat, ("o", "-"))
            ax.plot(rows["position"].map(xs), 100 * rows["robust_acc"], style, marker=marker,
                    color=color, label=f"{name} ({threat})")
        if param.scope == "defense":
            rows = s.drop_duplicates("position").sort_values("position")
            ax.plot(rows["position"].map(xs), 100 * rows["clean_acc"], "--", color=color,
                    alpha=0.7, linewidth=1, label=f"{name} (clean)")
    pos = list(xs.values())
    if numeric and min(pos) > 0 and max(pos) / min(pos) >= 50:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(pos, list(points["label"]))
    attacks = ",".join(dict.fromkeys(g["attack"]))
    eps = "" if param.scope == "eps" else ", eps " + ",".join(
        format_eps(e) for e in dict.fromkeys(g["eps"]))
    ax.set(xlabel=param.text, ylabel="accuracy (%)", ylim=(-2, 102),
           title=f"{where}: accuracy vs {param.text} ({attacks}{eps}; n={int(g['n'].min())})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
