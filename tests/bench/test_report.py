"""Leaderboard tables and exports, on a synthetic store written through the real schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import ConfigError
from bench.report import FORMATS, leaderboard, long_table, render, worst_case
from bench.store import CellResult, Store

EPS = 8 / 255
ROBUST = {  # (defense, attack, threat) -> per-sample robust correctness on 4 images
    ("dunet", "pgd100", "whitebox"): [0, 0, 0, 1],
    ("dunet", "fgsm", "oblivious"): [1, 1, 0, 1],
    ("dunet", "pgd100", "oblivious"): [1, 0, 1, 1],
    ("dunet", "ifgsm4", "oblivious"): [1, 1, 1, 1],
    ("none", "pgd100", "oblivious"): [0, 0, 0, 0],
    ("none", "fgsm", "oblivious"): [1, 0, 0, 0],
}


def _cell(defense: str, attack: str, threat: str, robust: list[int], eps: float = EPS,
          clean: list[int] | None = None, bpda: bool = False) -> CellResult:
    n = len(robust)
    return CellResult(
        config_hash=f"{defense}-{attack}-{threat}-{eps}-{n}", dataset="digits", split="test",
        n=n, model="cnn", defense=defense,
        defense_kind="model" if defense == "advtrain" else "preprocessor", attack=attack,
        threat=threat, norm="linf", eps=eps, seed=0,
        clean_correct=np.array(clean or [1] * n, dtype=np.uint8),
        robust_correct=np.array(robust, dtype=np.uint8), wall_time=1.5, device="cpu",
        git_rev="abc1234", attack_params={"steps": 100}, denoise_loss=0.01, bpda=bpda,
    )


@pytest.fixture
def frame(tmp_path: Path) -> pd.DataFrame:
    """A store whose baseline ('none') is written after a defense, and whose 'advtrain' row has
    cells of two sizes."""
    store = Store(tmp_path / "bench.sqlite")
    for (defense, attack, threat), robust in ROBUST.items():
        store.add(_cell(defense, attack, threat, robust, bpda=threat == "whitebox"))
    store.add(_cell("advtrain", "pgd10", "whitebox", [1, 1, 0, 0, 1, 1, 1, 1]))
    store.add(_cell("advtrain", "fgsm", "whitebox", [1, 1, 0, 0], clean=[1, 1, 1, 0]))
    store.add(_cell("none", "fgsm", "oblivious", [1, 1], eps=0.3))
    return store.frame()


def test_leaderboard_shape_and_order(frame: pd.DataFrame) -> None:
    wide = leaderboard(frame, baseline="none")
    assert list(wide["defense"]) == ["none", "dunet", "advtrain"]
    attack_cols = ["fgsm/oblivious@8/255", "fgsm/oblivious@0.3", "fgsm/whitebox@8/255",
                   "ifgsm4/oblivious@8/255", "pgd10/whitebox@8/255", "pgd100/oblivious@8/255",
                   "pgd100/whitebox@8/255"]
    assert list(wide.columns) == ["dataset", "model", "defense", "kind", "clean_acc", "n",
                                  *attack_cols]
    dunet = wide.set_index("defense").loc["dunet"]
    assert dunet["pgd100/whitebox@8/255"] == pytest.approx(0.25)
    assert dunet["fgsm/oblivious@8/255"] == pytest.approx(0.75)
    assert np.isnan(dunet["pgd10/whitebox@8/255"])
    assert ["digits/cnn/dunet", "pgd100/whitebox@8/255"] in wide.attrs["bpda"]


def test_leaderboard_without_baseline_keeps_first_appearance(frame: pd.DataFrame) -> None:
    assert list(leaderboard(frame)["defense"]) == ["dunet", "none", "advtrain"]


def test_leaderboard_varying_n_shows_min_and_range(frame: pd.DataFrame) -> None:
    wide = leaderboard(frame, baseline="none").set_index("defense")
    assert wide.loc["advtrain", "n"] == 4
    assert wide.loc["none", "n"] == 2
    assert wide.attrs["n_range"]["digits/cnn/advtrain"] == (4, 8)
    assert wide.loc["advtrain", "clean_acc"] == pytest.approx(1.0)  # from the n=8 cell


def test_repeated_cell_keeps_largest_n(frame: pd.DataFrame, tmp_path: Path) -> None:
    store = Store(tmp_path / "bench.sqlite")
    store.add(_cell("dunet", "pgd100", "whitebox", [1] * 8))
    wide = leaderboard(store.frame(), baseline="none").set_index("defense")
    assert wide.loc["dunet", "pgd100/whitebox@8/255"] == pytest.approx(1.0)
    assert len(long_table(store.frame())) == len(frame) + 1


def test_long_table_columns_and_csv(frame: pd.DataFrame) -> None:
    long = long_table(frame, baseline="none")
    for col in ("dataset", "model", "defense", "attack", "threat", "eps", "n", "clean_acc",
                "robust_acc", "denoise_loss", "bpda", "wall_time", "seed", "config_hash"):
        assert col in long.columns
    assert "robust_correct" not in long.columns
    assert len(long) == len(frame)
    assert long["defense"].iloc[0] == "none"
    back = pd.read_csv(io.StringIO(render(frame, "csv")))
    assert list(back.columns) == list(long.columns)


def test_markdown_has_percentages_and_caption(frame: pd.DataFrame) -> None:
    md = render(frame, "md", baseline="none")
    lines = md.splitlines()
    assert lines[0].startswith("| dataset | model | defense | kind | clean | n |")
    assert "| digits | cnn | none |" in lines[2]
    assert "25.0†" in md and "75.0" in md
    assert "4–8*" in md
    assert "n = 2–8" in md and "pgd100" in md and "whitebox" in md and "abc1234" in md


def test_json_parses_without_arrays(frame: pd.DataFrame) -> None:
    records = json.loads(render(frame, "json"))
    assert len(records) == len(frame)
    assert records[0]["attack_params"] == {"steps": 100}
    assert "robust_correct" not in records[0]
    assert isinstance(records[0]["n"], int)


def test_html_page_written_with_plots(frame: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "site"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "amplification.png").write_bytes(b"\x89PNG")
    path = Path(render(frame, "html", out_dir=out, baseline="none"))
    assert path == out / "leaderboard.html"
    page = path.read_text(encoding="utf-8")
    assert page.count("<table") == 3
    assert '<img src="plots/amplification.png"' in page
    assert "<script" not in page and "http" not in page


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_writes_each_format(frame: pd.DataFrame, tmp_path: Path, fmt: str) -> None:
    path = Path(render(frame, fmt, out_dir=tmp_path))
    assert path.name == f"leaderboard.{fmt}" and path.stat().st_size > 0


def test_worst_case_all_or_nothing(frame: pd.DataFrame) -> None:
    worst = worst_case(frame, baseline="none")
    row = worst[(worst["defense"] == "dunet") & (worst["threat"] == "oblivious")].iloc[0]
    # fgsm [1,1,0,1] & pgd100 [1,0,1,1] & ifgsm4 [1,1,1,1] -> [1,0,0,1]
    assert row["worst_case_acc"] == pytest.approx(0.5)
    assert row["min_single_acc"] == pytest.approx(0.75)
    assert row["attacks"] == "fgsm,ifgsm4,pgd100"
    advtrain = worst[worst["defense"] == "advtrain"]
    assert sorted(advtrain["n"]) == [4, 8]  # different slices are never combined


def test_errors(frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="md, csv, json, html"):
        render(frame, "xlsx")
    empty = Store(tmp_path / "empty.sqlite").frame()
    with pytest.raises(ConfigError, match="python -m bench run"):
        render(empty, "md")
    with pytest.raises(ConfigError, match="python -m bench run"):
        leaderboard(empty)
