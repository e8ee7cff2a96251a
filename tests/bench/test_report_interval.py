"""The headline's 95% interval (Wilson score) and the places rule that marks rows not separated,
on their own and in every format of the leaderboard."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from bench.report import leaderboard, render
from bench.report.interval import Interval, place_label, places, wilson
from bench.report.page import build_page
from bench.store import CellResult, Store

# Newcombe, "Two-sided confidence intervals for the single proportion", Statistics in Medicine
# 1998, Table I, method 3 (the score interval without continuity correction), to 4 decimals
NEWCOMBE = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
            (1, 29): (0.0061, 0.1718)}


@pytest.mark.parametrize(("k", "n", "want"), [
    (50, 100, (0.4038, 0.5962)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)),
    *((k, n, want) for (k, n), want in NEWCOMBE.items())])
def test_wilson_matches_published_values(k: int, n: int, want: tuple[float, float]) -> None:
    low, high = wilson(k, n)
    assert (low, high) == pytest.approx(want, abs=5e-5)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_ends_are_exact_and_no_images_give_nan() -> None:
    assert wilson(0, 360).low == 0.0 and wilson(360, 360).high == 1.0
    assert wilson(0, 360).high == pytest.approx(3.8415 / (360 + 3.8415), abs=1e-4)  # z²/(n+z²)
    assert all(math.isnan(v) for v in wilson(0, 0))


def _coverage(n: int, p: float) -> float:
    """The exact probability that the interval of k ~ Binomial(n, p) holds p."""
    return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)
               if wilson(k, n).low <= p <= wilson(k, n).high)


@pytest.mark.parametrize("n", [20, 100])
def test_wilson_covers_about_95_percent(n: int) -> None:
    """Formula-free: the coverage over accuracies 1%..99% is near 95% on average and never far
    below (the normal approximation averages 85% at n = 20 and drops to 18% near the ends)."""
    cover = [_coverage(n, p) for p in np.linspace(0.01, 0.99, 99)]
    assert 0.94 <= float(np.mean(cover)) <= 0.96
    assert min(cover) >= 0.90


@pytest.mark.parametrize("n", [10, 50, 100, 400])
def test_wilson_against_clopper_pearson(n: int) -> None:
    """Clopper-Pearson (the exact, conservative interval): Wilson's ends lie within 1/n of its,
    and Wilson is narrower for every k but k = 0 and k = n (where, from n = 50 on, it is
    slightly wider than Clopper-Pearson's 1 - 0.025^(1/n))."""
    wider = []
    for k in range(n + 1):
        cp = (0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1),
              1.0 if k == n else beta.ppf(0.975, k + 1, n - k))
        w = wilson(k, n)
        assert abs(w.low - cp[0]) <= 1 / n and abs(w.high - cp[1]) <= 1 / n, k
        if w.high - w.low >= cp[1] - cp[0]:
            wider.append(k)
    assert set(wider) <= {0, n}


def test_places_compare_each_pair_and_never_chain() -> None:
    a, b, c = Interval(0.80, 0.90), Interval(0.75, 0.85), Interval(0.70, 0.79)
    # b overlaps a and c, but a lies wholly above c: chaining would tie all three
    assert places([a, b, c]) == [(1, 2), (1, 3), (2, 3)]
    assert places([Interval(0.8, 0.9), Interval(0.5, 0.6), Interval(0.1, 0.2)]) == [
        (1, 1), (2, 2), (3, 3)]
    assert places([Interval(0.5, 0.6), Interval(0.6, 0.7)]) == [(1, 2), (1, 2)]  # touching
    assert places([]) == []
    assert [place_label(*p) for p in places([a, b, c])] == ["1–2", "1–3", "2–3"]


def test_overlapping_rows_always_share_a_place() -> None:
    rng = random.Random(0)
    for _ in range(200):
        ivs = []
        for _ in range(rng.randint(1, 7)):
            n = rng.choice([4, 20, 100, 1000])
            ivs.append(wilson(rng.randint(0, n), n))
        got = places(ivs)
        assert got == [(1 + sum(b.low > a.high for b in ivs), len(ivs) - sum(b.high < a.low
                                                                           for b in ivs))
                       for a in ivs]  # the definition, pair by pair
        for (i, x), (j, y) in itertools.combinations(enumerate(ivs), 2):
            overlap = x.low <= y.high and y.low <= x.high
            shared = max(got[i][0], got[j][0]) <= min(got[i][1], got[j][1])
            assert shared or not overlap
        for (best, worst), x in zip(got, ivs, strict=True):  # one place: apart from all others
            alone = all(x.low > y.high or y.low > x.high for y in ivs if y is not x)
            assert (best == worst) == (alone or len(ivs) == 1)


K = {"a": 90, "b": 84, "c": 70, "d": 30}  # robust images of 100 per defense at 0.1


def _cell(defense: str, k: int, n: int = 100, eps: float = 0.1, model: str = "cnn"
          ) -> CellResult:
    return CellResult(
        config_hash=f"{model}-{defense}-{eps}", dataset="digits", split="test", n=n,
        model=model, defense=defense, defense_kind="preprocessor", attack="pgd10",
        threat="whitebox", norm="linf", eps=eps, seed=0, clean_correct=np.ones(n, np.uint8),
        robust_correct=np.array([1] * k + [0] * (n - k), dtype=np.uint8), wall_time=1.0,
        device="cpu", git_rev="abc1234", attack_params={"steps": 10})


@pytest.fixture
def ranked(tmp_path: Path) -> pd.DataFrame:
    """Four defenses and the baseline at 0.1 over 100 images, one defense also at 0.3, and a
    second model's block with one defense."""
    store = Store(tmp_path / "r.sqlite")
    for c in [_cell("none", 5), *(_cell(d, k) for d, k in K.items()), _cell("a", 40, eps=0.3),
              _cell("e", 50, model="mlp")]:
        store.add(c)
    return store.frame()


def test_the_leaderboard_ranks_by_places_within_each_block(ranked: pd.DataFrame) -> None:
    assert not any("low" in c or "rank" in c for c in ranked.columns)  # nothing is stored
    wide = leaderboard(ranked, baseline="none")
    assert wide.attrs["rank_eps"] == 0.1 and wide.attrs["rank_columns"] == [
        "rank_best@0.1", "rank_worst@0.1"]
    got = {d: (b, w) for d, b, w in zip(wide["defense"], wide["rank_best@0.1"],
                                        wide["rank_worst@0.1"], strict=True)}
    # a [82.6, 94.5], b [75.6, 89.9], c [60.4, 78.1], d [21.9, 39.6]: a is above c although
    # both overlap b; d is below all three; e is alone in its block; the baseline is unranked
    assert got == {"none": (pd.NA, pd.NA), "a": (1, 2), "b": (1, 3), "c": (2, 3), "d": (4, 4),
                   "e": (1, 1)}
    for d, k in K.items():
        row = wide.set_index("defense").loc[d]
        assert (row["worst_case_low@0.1"], row["worst_case_high@0.1"]) == tuple(wilson(k, 100))


def test_every_format_shows_the_interval_and_the_places(ranked: pd.DataFrame) -> None:
    md = render(ranked, "md", baseline="none")
    rows = {r.split(" | ")[2]: r for r in md.splitlines() if r.startswith("| digits |")}
    assert rows["a"].startswith("| digits | cnn | a | preprocessor | 100.0 | 100 | 1–2 | "
                                "90.0 (82.6–94.5) | 1 | 40.0 (30.9–49.8) | 1 |")
    assert "| 100 | – | 5.0 (2.2–11.2) |" in rows["none"]
    assert [rows[d].split(" | ")[6] for d in "bcde"] == ["1–3", "2–3", "4", "1"]
    long = pd.read_csv(io.StringIO(render(ranked, "csv", baseline="none")))
    a = long[long["defense"] == "a"].set_index("eps")
    assert a.loc[0.1, ["worst_case", "rank_best", "rank_worst"]].tolist() == [0.9, 1, 2]
    assert a.loc[0.1, "worst_case_low"] == pytest.approx(wilson(90, 100).low)
    assert a.loc[0.3, "worst_case_high"] == pytest.approx(wilson(40, 100).high)
    assert math.isnan(a.loc[0.3, "rank_best"])  # ranked at the eps rows are sorted by only
    records = json.loads(render(ranked, "json", baseline="none"))
    c = next(r for r in records if r["defense"] == "c")
    assert (c["rank_best"], c["rank_worst"]) == (2, 3) and isinstance(c["rank_best"], int)
    assert c["worst_case_low"] == pytest.approx(wilson(70, 100).low)
    assert next(r for r in records if r["defense"] == "none")["rank_best"] is None
    foot = json.loads(render(ranked, "robustbench", baseline="none"))[
        "model_info/digits/Linf/cnn_a_eps0.1.json"]["footnote"]
    assert "95% Wilson score interval over the 100 images is 82.56–94.48%" in foot


def test_the_page_shows_intervals_in_its_tables_and_charts(ranked: pd.DataFrame) -> None:
    page = build_page(ranked, "none")
    board = re.search(r'<table id="board".*?</table>', page, re.S).group(0)
    assert '90.0 <span class="ci">(82.6–94.5)</span>' in board
    assert re.findall(r'class="rank">([^<]*)<', board) == ["–", "1–2", "1–3", "2–3", "4", "1"]
    breakdown = re.search(r'<table id="breakdown".*?</table>', page, re.S).group(0)
    assert "95% interval (%)" in breakdown and ">60.4–78.1</td>" in breakdown
    assert "worst case@0.1 90.0% (82.6–94.5)" in page  # the detail view's summary
    charts = [ET.fromstring(m) for m in re.findall(r'<svg class="chart eps-chart".*?</svg>',
                                                    page, re.S)]
    bars = {(g.get("data-defense"), float(p.get("data-low")), float(p.get("data-high")))
            for svg in charts for g in svg.iter("g") if g.get("class") == "series"
            for p in g.iter("path") if p.get("class") == "ci"}
    want = {("a", *wilson(90, 100)), ("a", *wilson(40, 100)),
            *((d, *wilson(k, 100)) for d, k in K.items() if d != "a")}
    assert {b for b in bars if b[0] in K} == want
