"""Sweeps: parameter parsing, one store cell per value, rows read back from the store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.sweep import (
    CSV_COLUMNS,
    SweepParam,
    _sweep_figure,
    parse_param,
    parse_values,
    plot_sweep,
    run_sweep,
)
from bench.cache import Cache
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.registry import ATTACKS, DEFENSES
from bench.store import Store

FAST = {"epochs": 1}  # a 1-epoch classifier: these tests check bookkeeping, not accuracy
GRID = RunConfig(datasets=("digits",), defenses=("bitdepth",), attacks=("fgsm", "ifgsm2"),
                 eps=(0.2,), n=30)


def test_parse_param_scopes() -> None:
    assert parse_param("bitdepth.bits", GRID) == SweepParam("bitdepth.bits", "defense",
                                                            "bitdepth", "bits")
    assert parse_param("ifgsm2.steps", GRID).scope == "attack"
    assert parse_param("eps", RunConfig(defenses=("bitdepth",), attacks=("fgsm",))).scope == "eps"


@pytest.mark.parametrize(("text", "expected"), [
    ("bits", "DEFENSE.OPTION"),
    ("jpeg.quality", "not in --defense or --attack"),
    ("bitdepth.input_shape", "sets input_shape itself"),
    ("fgsm.eps", "--param eps"),
    ("bitdepth.bitz", "takes no option bitz"),
    ("eps", "drop --eps"),
])
def test_parse_param_errors_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        parse_param(text, GRID)
    assert "\n" not in str(info.value)


def test_parse_values() -> None:
    eps = parse_values(SweepParam("eps", "eps"), "8/255, 0.1,0.1")
    assert eps == {"8/255": pytest.approx(8 / 255), "0.1": 0.1}
    opt = parse_values(SweepParam("x.y", "defense", "x", "y"), "1,0.5,true,pixel")
    assert opt == {"1": 1, "0.5": 0.5, "true": True, "pixel": "pixel"}
    with pytest.raises(ConfigError, match="empty"):
        parse_values(SweepParam("eps", "eps"), " , ")


def test_apply_sets_only_the_swept_setting() -> None:
    cfg = RunConfig(defense_opts={"bitdepth.bits": 3, "epochs": 2}, attack_opts={"steps": 5})
    out = SweepParam("bitdepth.bits", "defense", "bitdepth", "bits").apply(cfg, 6)
    assert out.defense_opts == {"epochs": 2, "bitdepth.bits": 6}
    assert list(out.defense_opts)[-1] == "bitdepth.bits"  # scoped and last: it wins
    out = SweepParam("pgd10.steps", "attack", "pgd10", "steps").apply(cfg, 7)
    assert out.attack_opts == {"steps": 5, "pgd10.steps": 7}
    assert out.defense_opts == cfg.defense_opts
    assert SweepParam("eps", "eps").apply(cfg, 0.1).eps == (0.1,)


def test_defense_option_sweep_makes_one_cell_per_value_and_resumes(tmp_path: Path) -> None:
    if "bitdepth" not in DEFENSES or "fgsm" not in ATTACKS:
        pytest.skip("bitdepth or fgsm not registered")
    cfg = RunConfig(datasets=("digits",), defenses=("bitdepth",), attacks=("fgsm",),
                    eps=(0.2,), n=30, threats=("oblivious", "whitebox"), model_opts=FAST)
    param = parse_param("bitdepth.bits", cfg)
    values = parse_values(param, "1,2,8")
    store = Store(tmp_path / "r.sqlite")
    table = run_sweep(cfg, param, values, store, Cache())
    own = table[table["defense"] == "bitdepth"]
    assert len(own) == 6 and own["config_hash"].nunique() == 6  # 3 values x 2 threats
    assert list(own["value"]) == [1, 2, 8, 1, 2, 8] and set(own["threat"]) == {"oblivious",
                                                                               "whitebox"}
    base = table[table["defense"] != "bitdepth"]
    assert len(base) == 6 and base["config_hash"].nunique() == 2  # baseline: same cells
    stored = store.frame().set_index("config_hash")
    assert len(stored) == 8
    for row in own.itertuples():
        cell = stored.loc[row.config_hash]
        assert cell["defense_params"]["bits"] == row.value
        assert (row.robust_acc, row.clean_acc, row.bpda) == (cell["robust_acc"],
                                                             cell["clean_acc"], cell["bpda"])
        assert row.bpda == (row.threat == "whitebox")
    before = list(store.frame()["created_at"])
    again = run_sweep(cfg, param, values, store, Cache())
    assert again.equals(table) and list(store.frame()["created_at"]) == before


def test_attack_option_sweep_gives_distinct_cells(tmp_path: Path) -> None:
    cfg = RunConfig(datasets=("digits",), defenses=("none",), attacks=("ifgsm2",), eps=(0.2,),
                    n=20, threats=("oblivious",), model_opts=FAST)
    param = parse_param("ifgsm2.steps", cfg)
    table = run_sweep(cfg, param, parse_values(param, "1,3"), Store(tmp_path / "r.sqlite"),
                      Cache())
    assert list(table["value"]) == [1, 3] and table["config_hash"].nunique() == 2
    steps = Store(tmp_path / "r.sqlite").frame()["attack_params"].map(lambda p: p["steps"])
    assert sorted(steps) == [1, 3]


def _table(param: str, values: list[float]) -> pd.DataFrame:
    rows = []
    for d_i, defense in enumerate(["none", "bitdepth"]):
        for threat in ("oblivious", "whitebox"):
            for i, v in enumerate(values):
                robust = 0.5 - 0.1 * i + (0.05 * d_i if threat == "oblivious" else 0.0)
                rows.append({"dataset": "digits", "model": "cnn", "defense": defense,
                             "attack": "fgsm", "threat": threat,
                             "eps": v if param == "eps" else 0.2, "param": param, "value": v,
                             "n": 10, "clean_acc": 0.9, "robust_acc": robust,
                             "bpda": threat == "whitebox" and d_i == 1, "config_hash": f"h{i}",
                             "label": str(v), "position": i})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("param", "lines"), [
    # none: both threats identical -> one line; bitdepth: two; a dashed clean line per defense
    (SweepParam("bitdepth.bits", "defense", "bitdepth", "bits"), 1 + 2 + 2),
    (SweepParam("eps", "eps"), 1 + 2),  # eps varies along x: never split into series
])
def test_sweep_figure_draws_one_line_per_defense_and_threat(param: SweepParam,
                                                            lines: int) -> None:
    values = [0.05, 0.1, 0.2, 0.3]
    fig = _sweep_figure(_table(param.text, values), param, "digits/cnn")
    drawn = fig.axes[0].get_lines()
    assert len(drawn) == lines
    assert all(len(line.get_xdata()) == len(values) for line in drawn)
    labels = [line.get_label() for line in drawn]
    assert "none (oblivious = whitebox)" in labels and "bitdepth (whitebox)" in labels


def test_plot_sweep_writes_one_figure_per_dataset_and_model(tmp_path: Path) -> None:
    table = _table("eps", [0.1, 0.2])
    other = table.assign(model="cnn3x3")
    paths = plot_sweep(pd.concat([table, other]), SweepParam("eps", "eps"), tmp_path)
    assert [p.name for p in paths] == [f"sweep-digits-{m}-eps-fgsm.{ext}" for m in
                                       ("cnn", "cnn3x3") for ext in ("png", "svg", "csv")]
    back = pd.read_csv(paths[2])
    assert list(back.columns) == list(CSV_COLUMNS) and len(back) == len(table)
    assert list(back["robust_acc"]) == list(table["robust_acc"])
