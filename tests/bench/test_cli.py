"""The command line: one-line errors with the fix, listing, and a small end-to-end run."""

from __future__ import annotations

import csv as csvmod
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.cli import main
from bench.registry import ATTACKS, DEFENSES


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--defense", "lgdd"], "Did you mean 'lgd'"),
        (["run", "--attack", "pdg100"], "Did you mean 'pgd100'"),
        (["run", "--dataset", "mnsit"], "Did you mean 'mnist'"),
        (["run", "--model", "cnn33"], "Did you mean 'cnn3x3'"),
        (["run", "--eps=-0.1"], "outside [0, 1]"),
        (["run", "--eps", "1.5"], "outside [0, 1]"),
        (["run", "--eps", "abc"], "Bad epsilon"),
        (["run", "--n", "0"], "--n 0"),
        (["run", "--threat", "blackbox"], "Unknown threat model"),
        (["run", "--defense-opt", "epochs"], "key=value"),
        (["run"], "No attack given"),
    ],
)
def test_bad_input_is_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     argv: list[str], expected: str) -> None:
    if "lgdd" in argv and "lgd" not in DEFENSES:
        pytest.skip("lgd not registered")
    code, out, err = run_cli(capsys, *argv, "--results", str(tmp_path / "r.sqlite"))
    assert code == 2
    line = error_line(err)
    assert expected in line
    if "Did you mean" in expected:
        assert "python -m bench list" in line


def test_missing_data_names_path_and_both_fixes(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "run", "--dataset", "mnist", "--data-root", str(tmp_path),
                           "--attack", "fgsm", "--results", str(tmp_path / "r.sqlite"))
    assert code == 2
    line = error_line(err)
    assert str(tmp_path) in line and "--data-root" in line and "--download" in line


def test_list_globs_in_natural_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list", "attacks", "pgd*")
    names = [ln.split()[0] for ln in out.splitlines()]
    assert code == 0 and names == ATTACKS.list("pgd*")
    assert names.index("pgd10") < names.index("pgd100") < names.index("pgd1000")


def test_leaderboard_without_store_is_an_error(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "leaderboard", "--results", str(tmp_path / "none.sqlite"))
    assert code == 2 and "bench run" in error_line(err)


def test_run_then_leaderboard_formats(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    code, out, _ = run_cli(capsys, "run", "--attack", "fgsm,noise", "--n", "40", "--eps", "0.2",
                           "--results", db)
    assert code == 0
    assert "none" in out and "fgsm" in out and "%" in out
    rows = sqlite3.connect(db).execute("SELECT count(*), count(DISTINCT config_hash) "
                                       "FROM results").fetchone()
    assert rows == (4, 4)  # none x {fgsm, noise} x {oblivious, whitebox}
    code, md, _ = run_cli(capsys, "leaderboard", "--results", db, "--format", "md")
    assert code == 0 and md.strip() in out
    code, csv, _ = run_cli(capsys, "leaderboard", "--results", db, "--format", "csv")
    header = csv.splitlines()[0].split(",")
    for col in ("dataset", "model", "defense", "attack", "threat", "eps", "n", "clean_acc",
                "robust_acc"):
        assert col in header
    assert len(csv.strip().splitlines()) == 5
    code, js, _ = run_cli(capsys, "leaderboard", "--results", db, "--format", "json")
    assert len(json.loads(js)) == 4
    code, path, _ = run_cli(capsys, "leaderboard", "--results", db, "--format", "html",
                            "--out", str(tmp_path / "site"))
    html = Path(path.strip()).read_text()
    assert "<table" in html and "</html>" in html
    # a second run of the same grid is a no-op on the store
    code, out2, _ = run_cli(capsys, "run", "--attack", "fgsm,noise", "--n", "40", "--eps", "0.2",
                            "--results", db)
    assert code == 0 and out2 == out


FAST = ["--model-opt", "epochs=1"]  # a 1-epoch classifier: these tests check the plumbing


def test_plot_residual_writes_png_svg_and_fits(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "plot", "residual", "--defense", "median,bitdepth",
                             "--attack", "fgsm", "--eps", "0.2", "--n", "20", *FAST,
                             "--out", str(tmp_path / "plots"))
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert [p.suffix for p in paths] == [".png", ".svg", ".csv"]
    assert all(p.is_file() for p in paths) and paths[0].read_bytes()[:4] == b"\x89PNG"
    rows = list(csvmod.DictReader(paths[2].open()))
    assert [r["defense"] for r in rows] == ["median", "bitdepth"]
    assert all(int(r["n_pixels"]) == 20 * 28 * 28 for r in rows)


def test_plot_amplification_curves_and_matched_noise(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "plot", "amplification", "--defense", "median,bitdepth",
                             "--attack", "fgsm", "--eps", "0.2", "--n", "20", *FAST,
                             "--matched-noise", "--out", str(tmp_path / "plots"))
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert [p.suffix for p in paths] == [".png", ".svg", ".csv"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    with paths[2].open() as f:
        header = next(csvmod.reader(f))
        rows = list(csvmod.reader(f))
    assert header == ["layer", "depth", "adversarial", "random noise", "median (denoised)",
                      "random noise, median's norm", "bitdepth (denoised)",
                      "random noise, bitdepth's norm"]
    assert len(rows) >= 5  # every computing layer of the digits CNN, logits last
    values = [[float(v) for v in row[2:]] for row in rows]
    assert all(v >= 0 for row in values for v in row)
    assert values[-1][0] > 0  # FGSM at eps 0.2 moves the logits


@pytest.mark.parametrize("plot", ["residual", "amplification"])
def test_plot_rejects_model_kind_defenses(capsys: pytest.CaptureFixture[str],
                                          register_plugin: Callable[..., str], tmp_path: Path,
                                          plot: str) -> None:
    class WholeModel:
        kind = "model"

    register_plugin(DEFENSES, "whole-net", WholeModel)
    code, out, err = run_cli(capsys, "plot", plot, "--defense", "median,whole-net", "--attack",
                             "fgsm", "--out", str(tmp_path))
    assert code == 2 and out == ""
    line = error_line(err)
    assert "'whole-net'" in line and "'median'" not in line and "--defense" in line
    assert not list(tmp_path.iterdir())


def test_plot_sweep_csv_equals_the_stored_cells(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    argv = ["plot", "sweep", "--defense", "bitdepth", "--param", "bitdepth.bits", "--values",
            "1,2,4,8", "--attack", "fgsm", "--eps", "0.2", "--n", "20", *FAST,
            "--results", str(db), "--out", str(tmp_path / "plots")]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert [p.suffix for p in paths] == [".png", ".svg", ".csv"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    rows = list(csvmod.DictReader(paths[2].open()))
    con = sqlite3.connect(db)
    stored = {h: (c, r, b) for h, c, r, b in con.execute(
        "SELECT config_hash, clean_acc, robust_acc, bpda FROM results")}
    assert len(stored) == 2 + 4 * 2  # baseline x 2 threats + 4 values x 2 threats
    mine = [r for r in rows if r["defense"] == "bitdepth"]
    assert [r["value"] for r in mine] == ["1", "2", "4", "8"] * 2
    for r in rows:
        clean, robust, bpda = stored[r["config_hash"]]
        assert (float(r["clean_acc"]), float(r["robust_acc"])) == (clean, robust)
        assert (r["bpda"] == "True") == bool(bpda)
    assert run_cli(capsys, *argv)[1] == out  # a rerun reads the stored cells back
    assert len(con.execute("SELECT config_hash FROM results").fetchall()) == len(stored)


def test_plot_sweep_bad_param_is_one_line_error(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "plot", "sweep", "--defense", "bitdepth", "--param", "bits",
                           "--values", "1,2", "--attack", "fgsm",
                           "--results", str(tmp_path / "r.sqlite"))
    assert code == 2 and "DEFENSE.OPTION" in error_line(err)


def _nightly_commands() -> list[list[str]]:
    """Every ``python -m bench ...`` command of the nightly GPU workflow, continuations joined."""
    import shlex

    yaml = pytest.importorskip("yaml")
    workflow = Path(__file__).parents[2] / ".github" / "workflows" / "nightly.yml"
    steps = [s for job in yaml.safe_load(workflow.read_text())["jobs"].values()
             for s in job["steps"]]
    lines = "\n".join(s.get("run", "") for s in steps).replace("\\\n", " ").splitlines()
    return [shlex.split(line)[3:] for line in lines
            if line.strip().startswith("python -m bench ")]


def test_the_nightly_workflows_commands_parse_and_name_registered_plugins() -> None:
    """The nightly job runs unattended on a GPU box: a typo there would cost a night."""
    from bench.cli import build_parser
    from bench.config import parse_eps
    from bench.registry import DATASETS, MODELS

    commands = _nightly_commands()
    assert any(c[:2] == ["plot", "amplification"] and "imagenet" in c for c in commands)
    for argv in commands:
        args = build_parser().parse_args(argv)
        for attr, registry in [("defense", DEFENSES), ("attack", ATTACKS),
                               ("dataset", DATASETS), ("model", MODELS)]:
            for name in filter(None, str(getattr(args, attr, None) or "").split(",")):
                registry.get(name)  # raises with suggestions when unknown
        for eps in filter(None, str(getattr(args, "eps", None) or "").split(",")):
            parse_eps(eps)


def test_config_file_through_the_cli_stores_exactly_its_cells(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--config's precedence through the real parser: the file's fields are used (argparse
    defaults do not overwrite them), a field given on the command line wins, the rest are the
    dataclass defaults."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"defenses": ["none", "bitdepth"], "attacks": ["fgsm"],
                               "eps": ["8/255"], "threats": ["oblivious"], "seed": 3, "n": 20,
                               "model_opts": {"epochs": 1}}))
    db = tmp_path / "r.sqlite"
    code, out, err = run_cli(capsys, "run", "--config", str(cfg), "--results", str(db))
    assert code == 0, err
    rows = sqlite3.connect(db).execute(
        "SELECT defense, attack, threat, eps, seed, n, config FROM results").fetchall()
    assert sorted(r[:6] for r in rows) == [("bitdepth", "fgsm", "oblivious", 8 / 255, 3, 20),
                                           ("none", "fgsm", "oblivious", 8 / 255, 3, 20)]
    assert all(json.loads(r[6])["batch_size"] == 250 for r in rows)  # the dataclass default
    db2 = tmp_path / "r2.sqlite"
    code, _, err = run_cli(capsys, "run", "--config", str(cfg), "--n", "10", "--defense",
                           "none", "--results", str(db2))
    assert code == 0, err
    rows = sqlite3.connect(db2).execute("SELECT defense, n, seed, eps FROM results").fetchall()
    assert rows == [("none", 10, 3, 8 / 255)]


def test_logging_follows_stderr_when_main_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` called a second time after its caller replaced stderr (a test's capture, a
    notebook) logs to the new stream, not to the closed one of the first call."""
    import io

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    main(["list", "datasets"])
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    assert main(["run", "--attack", "fgsm", "--n", "500", "--dry-run"]) == 0
    assert second.getvalue().startswith("bench: digits test has 360 images; --n 500 uses all")
