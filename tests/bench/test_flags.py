"""Gradient-masking flags from stored per-image results: each check raises its flag on a row built
to fail it, with the numbers behind it, and stays quiet on a row that passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.report import leaderboard, render
from bench.report.flags import LEGEND
from bench.store import CellResult, Store, row_id

N = 100


def cell(attack: str, threat: str, broken: int, eps: float = 0.2, offset: int = 0,
         role: str | None = None, gradient_free: bool = False, steps: int | None = None,
         defense: str = "d", eot: int | None = None, **meta: Any) -> CellResult:
    """A cell on N images where images offset..offset+broken-1 are broken."""
    robust = np.ones(N, dtype=np.uint8)
    robust[offset:offset + broken] = 0
    params = {"steps": steps} if steps else {}
    config = {"dataset": "digits", "model": "cnn", "defense": defense, "n": N, "seed": 0,
              "slice": "s1", "attack": attack, "threat": threat, "eps": eps,
              "attack_params": params, **({"eot": eot} if eot else {})}
    return CellResult(
        config_hash=f"{defense}-{attack}-{threat}-{eps}-{steps}-{eot}", dataset="digits",
        split="test", n=N, model="cnn", defense=defense, defense_kind="preprocessor",
        attack=attack, threat=threat, norm="linf", eps=eps, seed=0,
        clean_correct=np.ones(N, dtype=np.uint8), robust_correct=robust, wall_time=1.0,
        device="cpu", git_rev="abc", attack_params=params, config=config,
        metadata={"audit_role": role, "gradient_free": gradient_free, **meta})


def codes(tmp: Path, cells: list[CellResult], checks: dict[str, Any] | None = None
          ) -> dict[str, str]:
    store = Store(tmp / "f.sqlite")
    for c in cells:
        store.add(c)
    for name, (value, detail) in (checks or {}).items():
        store.add_check(row_id(cells[0].config), name, value, detail)
    wide = leaderboard(store.frame())
    return {f["code"]: f["detail"] for fs in wide.attrs["flags"].values() for f in fs}


def test_a_sound_row_gets_no_flag(tmp_path: Path) -> None:
    found = codes(tmp_path, [
        cell("fgsm", "whitebox", 30, role="single-step"),
        cell("pgd10", "whitebox", 60, role="iterative", steps=10),
        cell("pgd10", "whitebox", 60, role="iterative", steps=20),
        cell("pgd10", "whitebox", 30, eps=0.1, role="iterative", steps=10),
        cell("pgd10", "whitebox", 100, eps=1.0, role="iterative", steps=10),
        cell("pgd10", "oblivious", 20, role="iterative", steps=10),
        cell("square", "whitebox", 40, role="score-based", gradient_free=True),
    ], {"zero_gradients": (0.0, {"count": 0, "n": N}),
        "nondeterministic": (0.0, {"count": 0, "n": N, "max_diff": 0.0}),
        "planted": (1.0, {"found": 18, "informative": 18, "n": 20, "trivial": 2,
                          "not_set_up": 0})})
    assert found == {}


def test_each_check_raises_its_flag_with_its_numbers(tmp_path: Path) -> None:
    found = codes(tmp_path, [
        cell("fgsm", "whitebox", 30, offset=50, role="single-step"),  # 30 beyond PGD's 0..19
        cell("pgd10", "whitebox", 20, role="iterative", steps=10),
        cell("pgd10", "whitebox", 10, role="iterative", steps=20),  # more steps, more robust?
        cell("pgd10", "whitebox", 50, eps=0.1, role="iterative", steps=10),  # smaller eps, lower
        cell("pgd10", "whitebox", 70, eps=1.0, role="iterative", steps=10),  # 30% left at eps 1
        cell("pgd10", "oblivious", 40, offset=10, role="iterative", steps=10),
        cell("square", "whitebox", 25, offset=70, role="score-based", gradient_free=True),
    ], {"zero_gradients": (0.31, {"count": 31, "n": N, "through": "through the defense"}),
        "nondeterministic": (0.05, {"count": 5, "n": N, "max_diff": 0.5}),
        "planted": (0.25, {"found": 4, "informative": 16, "n": 20, "trivial": 3,
                           "not_set_up": 1, "through": "through BPDA"})})
    assert set(found) == set(LEGEND) - {"NC"}
    assert "broke 30 of 100 images (30.0%)" in found["SS"]
    assert "50.0% at eps 0.1, 80.0% at eps 0.2" in found["EPS"]
    assert "leaves 30.0% (chance 10.0%)" in found["UB"]
    # Square broke 70..94; FGSM (a whitebox gradient attack too) already broke 70..79
    assert found["BB"].startswith("square/whitebox@0.2 broke 15 of 100 images")
    assert "31 of 100 images (31.0%)" in found["ZG"]
    assert "5 of 100 images" in found["ND"] and "0.5" in found["ND"]
    assert "broke 30 of 100 images" in found["WO"]  # oblivious broke 10..49, whitebox 0..19
    assert found["PT"].startswith("the suite's gradient attacks found an adversarial example "
                                  "for 4 of 16 images (25.0%) where one is planted")


def test_not_converged_when_doubling_steps_lowers_accuracy(tmp_path: Path) -> None:
    found = codes(tmp_path, [cell("pgd10", "whitebox", 20, role="iterative", steps=10),
                             cell("pgd10", "whitebox", 40, role="iterative", steps=20)])
    assert found == {"NC": "pgd10/whitebox@0.2 (steps=10) 80.0% -> 20 steps 60.0%"}


def test_an_eot_attack_and_a_one_draw_attack_are_two_series(tmp_path: Path) -> None:
    """EPS and NC compare one attack with itself: EOT-20 cells beside one-draw cells (a
    randomized defense attacked both ways) are not one series whose steps or eps changed."""
    found = codes(tmp_path, [cell("pgd10", "whitebox", 50, role="iterative", steps=10),
                             cell("pgd10", "whitebox", 90, role="iterative", steps=20, eot=20),
                             cell("pgd10", "whitebox", 90, eps=0.1, role="iterative", steps=10,
                                  eot=20)])
    assert found == {}


def test_a_passed_check_keeps_its_figures(tmp_path: Path) -> None:
    from bench.audit import checklist
    from bench.report.flags import findings, undecided
    from bench.report.identity import identify

    store = Store(tmp_path / "p.sqlite")
    for c in (cell("fgsm", "whitebox", 10, role="single-step"),
              cell("pgd10", "whitebox", 20, role="iterative", steps=10),
              cell("pgd10", "oblivious", 5, role="iterative", steps=10)):
        store.add(c)
    frame = store.frame()
    cells = identify(frame)
    found = findings(cells, frame.attrs["checks"])
    assert {f["code"]: f["raised"] for f in found["digits/cnn/d"]} == {"SS": False, "WO": False}
    text = checklist(found, 0.2, undecided(cells, frame.attrs["checks"]))
    assert "[pass] SS single-step beats iterative: fgsm/whitebox@0.2 broke 0 of 100" in text
    assert "[pass] WO whitebox weaker than oblivious: pgd10/oblivious@0.2 broke 0 of 100" in text
    assert "[n/a ] NC" in text


def test_nondeterminism_of_a_randomized_defense_is_no_flag(tmp_path: Path) -> None:
    found = codes(tmp_path, [cell("pgd10", "whitebox", 20, role="iterative", steps=10)],
                  {"nondeterministic": (0.9, {"count": 90, "n": N, "max_diff": 2.0,
                                              "randomized": True})})
    assert found == {}


def test_suite_members_count_as_black_box_or_gradient(tmp_path: Path) -> None:
    suite = cell("adaptive", "whitebox", 30)
    first: list[int | None] = [None] * N
    first[:28] = [1] * 28
    first[28:30] = [2, 2]  # Square broke 2 images the gradient member did not
    suite.metadata["suite"] = {"members": [{"label": "apgd-ce", "threat": "whitebox"},
                                           {"label": "square", "threat": "whitebox",
                                            "gradient_free": True}], "first_break": first}
    found = codes(tmp_path, [suite])
    assert found == {"BB": "adaptive:square broke 2 of 100 images (2.0%) that the whitebox "
                           "gradient attacks did not at eps 0.2"}


def test_flags_are_shown_with_a_legend(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.sqlite")
    for c in (cell("pgd10", "whitebox", 20, role="iterative", steps=10),
              cell("pgd10", "whitebox", 40, role="iterative", steps=20)):
        store.add(c)
    md = render(store.frame(), "md")
    row = [line for line in md.splitlines() if line.startswith("| digits")][0]
    assert "| NC |" in row
    assert "- digits/cnn/d: NC pgd10/whitebox@0.2" in md and "Legend: NC = not converged" in md


def test_checks_without_the_cells_they_need_are_undecided_not_passed(tmp_path: Path) -> None:
    from bench.report.flags import undecided
    from bench.report.identity import identify

    store = Store(tmp_path / "u.sqlite")
    first = cell("pgd10", "whitebox", 20, role="iterative", steps=10)
    store.add(first)
    store.add_check(row_id(first.config), "nondeterministic",
                    0.5, {"count": 50, "n": N, "max_diff": 1.0, "randomized": True})
    frame = store.frame()
    na = undecided(identify(frame), frame.attrs["checks"])["digits/cnn/d"]
    assert set(na) == {"SS", "NC", "EPS", "UB", "WO", "ZG", "ND", "PT"}  # BB: has its attack
    assert na["ND"] == "the defense declares itself randomized"
    assert na["ZG"].startswith("not measured") and na["PT"].startswith("not measured")
    store.add_check(row_id(first.config), "planted", 1.0,
                    {"found": 6, "informative": 6, "n": 20, "trivial": 4, "not_set_up": 10})
    frame = store.frame()
    na = undecided(identify(frame), frame.attrs["checks"])["digits/cnn/d"]
    assert na["PT"] == "6 informative planted tasks of 20 images, needs 10: raise --planted-n"
    store.add(cell("pgd10", "whitebox", 40, role="iterative", steps=20))
    store.add(cell("pgd10", "oblivious", 40, role="iterative", steps=10))
    frame = store.frame()
    na = undecided(identify(frame), frame.attrs["checks"])["digits/cnn/d"]
    assert "NC" not in na and "WO" not in na and "EPS" in na
