"""Leaderboard tables and exports, on a synthetic store written through the real schema."""

from __future__ import annotations

import io
import json
import re
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
    # cells over different images (n) are different rows: never combined, never hidden; the
    # baseline first, then the rows by their headline worst case, highest first
    assert list(zip(wide["defense"], wide["n"], strict=True)) == [
        ("none", 4), ("none", 2), ("advtrain", 8), ("advtrain", 4), ("dunet", 4)]
    attack_cols = ["fgsm/oblivious@8/255", "fgsm/oblivious@0.3", "fgsm/whitebox@8/255",
                   "ifgsm4/oblivious@8/255", "pgd10/whitebox@8/255", "pgd100/oblivious@8/255",
                   "pgd100/whitebox@8/255"]
    heads = ["worst case@8/255", "worst_case_low@8/255", "worst_case_high@8/255",
             "attacks@8/255", "worst case@0.3", "worst_case_low@0.3", "worst_case_high@0.3",
             "attacks@0.3"]
    assert list(wide.columns) == ["dataset", "model", "defense", "kind", "clean_acc", "n",
                                  "rank_best@8/255", "rank_worst@8/255", *heads, "flags",
                                  *attack_cols]
    dunet = wide.set_index("defense").loc["dunet"]
    assert dunet["pgd100/whitebox@8/255"] == pytest.approx(0.25)
    assert dunet["fgsm/oblivious@8/255"] == pytest.approx(0.75)
    assert np.isnan(dunet["pgd10/whitebox@8/255"])
    assert ["digits/cnn/dunet", "pgd100/whitebox@8/255"] in wide.attrs["bpda"]


def test_leaderboard_without_baseline_keeps_first_appearance(frame: pd.DataFrame) -> None:
    assert list(leaderboard(frame)["defense"]) == ["advtrain", "advtrain", "dunet", "none",
                                                   "none"]


def test_every_stored_number_is_visible(frame: pd.DataFrame) -> None:
    wide = leaderboard(frame, baseline="none")
    shown = sorted(v for c in wide.attrs["attack_columns"] for v in wide[c] if not np.isnan(v))
    assert shown == sorted(frame["robust_acc"])
    rows = wide.set_index("n")
    assert wide[wide["defense"] == "advtrain"].set_index("n").loc[4, "clean_acc"] == \
        pytest.approx(0.75)
    assert rows.loc[8, "clean_acc"] == pytest.approx(1.0)


def test_a_cell_with_another_n_is_its_own_row(frame: pd.DataFrame, tmp_path: Path) -> None:
    store = Store(tmp_path / "bench.sqlite")  # the fixture's store
    store.add(_cell("dunet", "pgd100", "whitebox", [1] * 8))
    wide = leaderboard(store.frame(), baseline="none")
    dunet = wide[wide["defense"] == "dunet"].set_index("n")["pgd100/whitebox@8/255"]
    assert dunet.to_dict() == {4: pytest.approx(0.25), 8: pytest.approx(1.0)}
    assert len(long_table(store.frame())) == len(frame) + 1


def _variant(tmp: Path, cells: list[CellResult]) -> pd.DataFrame:
    store = Store(tmp / "v.sqlite")
    for c in cells:
        store.add(c)
    return store.frame()


def _with(cell: CellResult, h: str, **config: object) -> CellResult:
    cell.config_hash = h
    cell.config = {"dataset": cell.dataset, "model": cell.model, "defense": cell.defense,
                   "attack": cell.attack, "threat": cell.threat, "eps": cell.eps, "n": cell.n,
                   "seed": 0, **config}
    for key in ("attack_params", "defense_params"):
        if key in config:
            setattr(cell, key, config[key])
    return cell


def test_targeted_and_untargeted_cells_get_their_own_labelled_columns(tmp_path: Path) -> None:
    df = _variant(tmp_path, [
        _with(_cell("none", "fgsm", "oblivious", [1, 0, 0, 0], eps=0.1), "a",
              attack_params={"alpha": 0.1, "targeted": None}),
        _with(_cell("none", "fgsm", "oblivious", [1, 1, 1, 0], eps=0.1), "b",
              attack_params={"alpha": 0.1, "targeted": "least-likely"})])
    wide = leaderboard(df, baseline="none")
    assert wide.attrs["attack_columns"] == ["fgsm/oblivious@0.1 (targeted=none)",
                                            "fgsm/oblivious@0.1 (targeted=least-likely)"]
    assert len(wide) == 1
    assert wide.iloc[0]["fgsm/oblivious@0.1 (targeted=none)"] == pytest.approx(0.25)
    assert wide.iloc[0]["fgsm/oblivious@0.1 (targeted=least-likely)"] == pytest.approx(0.75)
    md = render(df, "md", baseline="none")
    assert "25.0" in md and "75.0" in md and "Settings in parentheses" in md


def test_defense_options_that_differ_label_their_rows(tmp_path: Path) -> None:
    cells = [_with(_cell("jpeg", "fgsm", "oblivious", r), h,
                   defense_params={"quality": q, "input_shape": [1, 28, 28]})
             for r, h, q in (([1, 0, 0, 0], "q50", 50), ([1, 1, 0, 0], "q75", 75))]
    cells.append(_with(_cell("none", "fgsm", "oblivious", [0, 0, 0, 0]), "n0",
                       defense_params={"input_shape": [1, 28, 28]}))
    wide = leaderboard(_variant(tmp_path, cells), baseline="none")
    assert list(wide["defense"]) == ["none", "jpeg (quality=75)", "jpeg (quality=50)"]
    assert list(wide["fgsm/oblivious@8/255"]) == pytest.approx([0.0, 0.5, 0.25])
    long = long_table(_variant(tmp_path, cells))
    assert set(long["row"]) == {"digits/cnn/none", "digits/cnn/jpeg (quality=50)",
                                "digits/cnn/jpeg (quality=75)"}


def test_a_composites_parts_label_its_row_only_when_its_own_options_do_not(
        tmp_path: Path) -> None:
    """An ensemble's parts' identities are in its configuration (every part's parameters): its
    own options name its rows; a part's setting only where nothing else tells two rows apart."""
    def ens(h: str, robust: list[int], denoisers: str, epochs: int | None) -> CellResult:
        one = {"params": {"epochs": epochs, "loss": "logit"}, "weights": f"w{epochs}"}
        parts = {"defenses": {"lgd": one, **({"lgd@cnn3x3": one} if "@" in denoisers else {})}}
        return _with(_cell("ensemble", "fgsm", "oblivious", robust), h, parts=parts,
                     defense_params={"denoisers": denoisers, "targets": "all"})
    rows = [ens("a", [1, 0, 0, 0], "lgd@all", None), ens("b", [1, 1, 0, 0], "lgd", None)]
    assert list(leaderboard(_variant(tmp_path, rows))["defense"]) == [
        "ensemble (denoisers=lgd)", "ensemble (denoisers=lgd@all)"]
    rows = [ens("c", [1, 0, 0, 0], "lgd", None), ens("d", [1, 1, 0, 0], "lgd", 5)]
    labels = list(leaderboard(_variant(tmp_path / "2", rows))["defense"])
    assert len(set(labels)) == 2 and all("parts.defenses.lgd.params.epochs=" in d
                                         for d in labels), labels


def test_classifier_options_label_the_model(tmp_path: Path) -> None:
    cells = [_with(_cell("none", "fgsm", "oblivious", r), h, model_opts={"epochs": e},
                   classifier=f"key{e}")
             for r, h, e in (([1, 0, 0, 0], "e1", 1), ([1, 1, 1, 0], "e4", 4))]
    wide = leaderboard(_variant(tmp_path, cells))
    assert list(wide["model"]) == ["cnn (model.epochs=1)", "cnn (model.epochs=4)"]
    assert list(wide["defense"]) == ["none", "none"]


def test_only_a_digest_differs_then_the_digest_labels_the_row(tmp_path: Path) -> None:
    cells = [_with(_cell("none", "fgsm", "oblivious", r), h, classifier=k)
             for r, h, k in (([1, 0, 0, 0], "h1", "aaaaaaaa1111"), ([1, 1, 0, 0], "h2",
                                                                   "bbbbbbbb2222"))]
    wide = leaderboard(_variant(tmp_path, cells))
    assert list(wide["model"]) == ["cnn (classifier=aaaaaaaa)", "cnn (classifier=bbbbbbbb)"]


def test_cells_of_an_older_schema_that_collide_are_told_apart_by_hash(tmp_path: Path) -> None:
    cells = [_cell("none", "fgsm", "oblivious", r) for r in ([1, 0, 0, 0], [1, 1, 0, 0])]
    cells[1].config_hash = "zz" + cells[1].config_hash
    wide = leaderboard(_variant(tmp_path, cells))
    assert len(wide) == 2 and all("config_hash=" in d for d in wide["defense"])


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
    assert lines[0].startswith("| dataset | model | defense | kind | clean | n | rank@8/255 | "
                               "worst case@8/255 | attacks@8/255 | worst case@0.3 |")
    # the headline with its 95% Wilson interval: 2 of 2 -> [34.2, 100]; the baseline unranked
    assert "| digits | cnn | none | preprocessor | 100.0 | 2 | – | – | – | 100.0 (34.2–100.0) " \
        "| 1 |" in md
    assert "| digits | cnn | dunet | preprocessor | 100.0 | 4 | 1–3 | 25.0 (4.6–69.9) | 4 |" in md
    assert "- digits/cnn/dunet @8/255: 25.0% robust (95% interval 4.6–69.9; 1 of 4, 4 attacks);" \
        " clean 0, pgd100/whitebox@8/255 3" in md
    assert "95% Wilson score interval over the row's n images" in md
    assert "not the randomness of the attacks or of training" in md
    assert "rows whose intervals overlap share a place, so a range (2–3) marks rows not " \
        "separated" in md
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
    (out / "plots" / "amplification.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = Path(render(frame, "html", out_dir=out, baseline="none"))
    assert path == out / "leaderboard.html"
    page = path.read_text(encoding="utf-8")
    # bench.report.page (tested in test_report_page.py): the wide table, the breakdown, the
    # all-or-nothing per threat, one table of cells per row (5), every cell
    assert page.count("<table") == 9
    assert '<img src="data:image/png;base64,iVBORw0KGgo="' in page  # embedded: self-contained
    assert 'src="http' not in page and "<link" not in page  # loads nothing from the network


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


def test_headline_is_the_per_image_minimum_not_the_minimum_of_means(tmp_path: Path) -> None:
    # two attacks at 50% each that break different images: nothing survives both; an image
    # wrong clean never counts as robust, even where an attack leaves it "correct"
    df = _variant(tmp_path, [
        _cell("lgd", "pgd100", "whitebox", [1, 1, 0, 0]),
        _cell("lgd", "square", "whitebox", [0, 0, 1, 1]),
        _cell("bit", "pgd100", "whitebox", [1, 1, 1, 0], clean=[1, 1, 0, 1]),
        _cell("bit", "square", "whitebox", [1, 1, 1, 1], clean=[1, 1, 0, 1])])
    wide = leaderboard(df).set_index("defense")
    assert wide.loc["lgd", "worst case@8/255"] == 0.0
    assert wide.loc["bit", "worst case@8/255"] == pytest.approx(0.5)
    assert wide.loc["bit", "attacks@8/255"] == 2
    assert list(wide.index) == ["bit", "lgd"]
    lines = dict(zip(wide.attrs["breakdown"]["defense"], wide.attrs["breakdown"]["broken_by"],
                     strict=True))
    assert lines["lgd"] == "clean 0, pgd100/whitebox@8/255 2, square/whitebox@8/255 2"
    assert lines["bit"] == "clean 1, pgd100/whitebox@8/255 1"


def test_a_suite_counts_as_its_members_and_attributes_images_to_them(tmp_path: Path) -> None:
    suite = _cell("dunet", "adaptive", "whitebox", [0, 0, 0, 1, 0], clean=[1, 1, 1, 1, 0])
    suite.metadata = {"suite": {"members": [{"label": "apgd-ce"}, {"label": "square"},
                                            {"label": "noise"}],
                                "first_break": [1, 2, 1, None, 0]}}
    pgd = _cell("dunet", "pgd100", "whitebox", [1, 1, 1, 0, 1], clean=[1, 1, 1, 1, 0])
    wide = leaderboard(_variant(tmp_path, [suite, pgd]))
    assert wide.iloc[0]["worst case@8/255"] == 0.0
    assert wide.iloc[0]["attacks@8/255"] == 4
    assert wide.attrs["breakdown"].iloc[0]["broken_by"] == (
        "clean 1, adaptive/whitebox@8/255:apgd-ce 2, adaptive/whitebox@8/255:square 1, "
        "pgd100/whitebox@8/255 1")


def test_eot_splits_a_column_only_where_one_row_needs_it(tmp_path: Path) -> None:
    eot = _with(_cell("rand", "pgd10", "whitebox", [1, 0, 0, 0]), "r20", eot=20)
    plain = _with(_cell("lgd", "pgd10", "whitebox", [1, 1, 0, 0]), "l")
    wide = leaderboard(_variant(tmp_path, [eot, plain]))
    assert wide.attrs["attack_columns"] == ["pgd10/whitebox@8/255"]  # the mark says EOT
    assert ["digits/cnn/rand", "pgd10/whitebox@8/255"] in wide.attrs["eot"]
    assert "25.0‡" in render(_variant(tmp_path, [eot, plain]), "md")
    single = _with(_cell("rand", "pgd10", "whitebox", [1, 1, 1, 0]), "r1")  # one draw, no EOT
    wide = leaderboard(_variant(tmp_path, [eot, plain, single]))
    assert sorted(wide.attrs["attack_columns"]) == ["pgd10/whitebox@8/255 (eot=20)",
                                                    "pgd10/whitebox@8/255 (eot=none)"]
    rand = wide.set_index("defense").loc["rand"]
    assert rand["pgd10/whitebox@8/255 (eot=20)"] == pytest.approx(0.25)
    assert rand["pgd10/whitebox@8/255 (eot=none)"] == pytest.approx(0.75)


# Two entries of RobustBench's own model_info/cifar10/Linf folder, verbatim (RobustBench/
# robustbench at 78fcc9e, Carmon2019Unlabeled.json and Atzmon2019Controlling.json): together
# they hold every field a Linf entry has (the second has a footnote, the first "unreliable").
ROBUSTBENCH_ENTRIES = ["""{
  "link": "https://arxiv.org/abs/1905.13736",
  "name": "Unlabeled Data Improves Adversarial Robustness",
  "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
  "additional_data": true,
  "number_forward_passes": 1,
  "dataset": "cifar10",
  "venue": "NeurIPS 2019",
  "architecture": "WideResNet-28-10",
  "eps": "8/255",
  "clean_acc": "89.69",
  "reported": "62.5",
  "autoattack_acc": "59.53",
  "unreliable": false
}""", """{
  "link": "https://arxiv.org/abs/1905.11911",
  "name": "Controlling Neural Level Sets",
  "authors": "Matan Atzmon, Niv Haim, Lior Yariv, Ofer Israelov, Haggai Maron, Yaron Lipman",
  "additional_data": false,
  "number_forward_passes": 1,
  "dataset": "cifar10",
  "venue": "NeurIPS 2019",
  "architecture": "ResNet-18",
  "eps": "0.031",
  "clean_acc": "81.30",
  "reported": "43.17",
  "footnote": "Uses \\\\(\\\\ell_{\\\\infty} \\\\) = 0.031 \\u2248 7.9/255 instead of 8/255.",
  "autoattack_acc": "40.22"
}"""]


@pytest.fixture
def rb_frame(tmp_path: Path) -> pd.DataFrame:
    """none and jpeg (its oblivious fgsm breaks an image the whitebox one does not: WO) at two
    eps, and a randomized defense evaluated with 10 draws per image."""
    store = Store(tmp_path / "rb.sqlite")
    cells = [_cell("none", "fgsm", "oblivious", [1, 0, 0, 0]),
             _cell("none", "fgsm", "whitebox", [1, 0, 0, 0]),
             _cell("jpeg", "fgsm", "oblivious", [1, 0, 1, 1]),
             _cell("jpeg", "fgsm", "whitebox", [1, 1, 1, 1], bpda=True),
             _cell("jpeg", "fgsm", "oblivious", [1, 1, 0, 0], eps=0.1),
             _cell("jpeg", "fgsm", "whitebox", [1, 0, 1, 0], eps=0.1, bpda=True),
             _cell("randomization", "fgsm", "oblivious", [1, 1, 0, 0], clean=[1, 1, 1, 0])]
    cells[-1].config = {"eval_draws": 10}
    for c in cells:
        store.add(c)
    return store.frame()


def test_robustbench_entries_have_the_real_field_set_and_the_stores_values(
        rb_frame: pd.DataFrame, tmp_path: Path) -> None:
    real = [json.loads(e) for e in ROBUSTBENCH_ENTRIES]
    fields = set().union(*real)
    paths = [Path(p) for p in render(rb_frame, "robustbench", out_dir=tmp_path / "rb",
                                     baseline="none").splitlines()]
    root = tmp_path / "rb" / "model_info" / "digits" / "Linf"
    assert sorted(p.relative_to(root).as_posix() for p in paths) == [
        "cnn_jpeg_eps0.1.json", "cnn_jpeg_eps8-255.json", "cnn_none_eps8-255.json",
        "cnn_randomization_eps8-255.json"]
    got = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in paths}
    for info in got.values():
        assert set(info) == fields
        for key, value in info.items():  # RobustBench's types: numbers as strings, ...
            if value is not None:
                assert all(type(value) is type(r[key]) for r in real if key in r), key
    jpeg = got["cnn_jpeg_eps8-255.json"]
    assert (jpeg["dataset"], jpeg["eps"], jpeg["clean_acc"], jpeg["autoattack_acc"]) == (
        "digits", "8/255", "100.00", "75.00")  # fgsm/obl [1,0,1,1] & fgsm/wb [1,1,1,1]
    assert jpeg["unreliable"] is True and "WO (whitebox weaker than oblivious" in \
        jpeg["footnote"]
    assert jpeg["number_forward_passes"] == 1 and jpeg["reported"] is None
    assert jpeg["additional_data"] is None  # not recorded: never guessed
    assert jpeg["link"] == "https://arxiv.org/abs/1705.02900" and jpeg["venue"] == "2017"
    assert jpeg["architecture"] == "jpeg + cnn"
    assert "worst case over the 2 stored attacks (fgsm/oblivious@8/255, fgsm/whitebox@8/255)" \
        in jpeg["footnote"]  # the strongest first
    assert "its 95% Wilson score interval over the 4 images is 30.06–95.44% (it covers the " \
        "sampling of the images, not the randomness of the attacks or of training)" \
        in jpeg["footnote"]
    assert got["cnn_jpeg_eps0.1.json"]["eps"] == "0.1"
    # per image, not the weaker of two means (50%): [1,1,0,0] & [1,0,1,0]
    assert got["cnn_jpeg_eps0.1.json"]["autoattack_acc"] == "25.00"
    rand = got["cnn_randomization_eps8-255.json"]
    assert (rand["number_forward_passes"], rand["clean_acc"], rand["autoattack_acc"],
            rand["unreliable"]) == (10, "75.00", "50.00", False)
    assert rand["name"] == "Mitigating Adversarial Effects Through Randomization"
    none = got["cnn_none_eps8-255.json"]
    assert (none["autoattack_acc"], none["link"], none["unreliable"]) == ("25.00", None, False)


def test_robustbench_without_out_prints_one_object_and_names_are_unique(
        frame: pd.DataFrame) -> None:
    infos = json.loads(render(frame, "robustbench", baseline="none"))
    # the fixture holds two 'advtrain' rows (n = 8 and n = 4) at 8/255: a digest tells them
    # apart, and each holds its own slice's numbers
    names = [p for p in infos if p.startswith("model_info/digits/Linf/cnn_advtrain_eps8-255-")]
    assert len(names) == 2
    assert sorted(infos[p]["autoattack_acc"] for p in names) == ["50.00", "75.00"]
    assert {infos[p]["architecture"] for p in names} == {"advtrain"}  # a model defense
    assert all(re.fullmatch(r"model_info/[A-Za-z0-9._/-]+\.json", p) for p in infos)
    assert infos == json.loads(render(frame, "robustbench", baseline="none"))  # stable


def test_cli_exports_robustbench_files(rb_frame: pd.DataFrame, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    out = tmp_path / "out"
    assert main(["leaderboard", "--results", str(tmp_path / "rb.sqlite"), "--format",
                 "robustbench", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and all(Path(p).is_file() for p in printed)
    assert json.loads((out / "model_info/digits/Linf/cnn_none_eps8-255.json").read_text(
        encoding="utf-8"))["autoattack_acc"] == "25.00"
