"""Every bad input is refused at the boundary: exit status 2, one line ``error: ...`` on stderr
naming the offending value and the fix, no traceback, nothing on stdout, and nothing trained or
stored. Option values, config files, output paths, the cache folder, devices and data files."""

from __future__ import annotations

import logging
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import Store
from tests.bench.helpers import write_mnist

ENV_CACHE = "BENCH_CACHE_DIR"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def damaged_mnist(file: str, damage: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A setup writing valid MNIST files under ``<tmp>/data`` and damaging ``file``."""
    def setup(tmp: Path) -> None:
        write_mnist(tmp / "data", "test", 5)
        write_mnist(tmp / "data", "train", 8)
        path = tmp / "data" / "MNIST" / "raw" / file
        path.write_bytes(damage(path.read_bytes()))
    return setup


def config_file(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "bad.json").write_text(text)
    return setup


def regular_file(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text("not a folder\n")
    return setup


def folder(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()
    return setup


def empty_store(tmp: Path) -> None:
    Store(tmp / "r.sqlite").done([])  # creates the file
    (tmp / "file").write_text("not a folder\n")


@dataclass(frozen=True)
class Case:
    """A bad command line; ``{tmp}`` in it is the test's tmp_path. ``says``: words the error line
    must contain (the offending value or option, and a hint of the fix)."""

    argv: tuple[str, ...]
    says: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    results: bool = True  # append --results {tmp}/r.sqlite
    cache_is_file: bool = False  # $BENCH_CACHE_DIR is a regular file
    not_says: tuple[str, ...] = ()


RUN_FGSM = ("run", "--attack", "fgsm")
RUN_PGD = ("run", "--attack", "pgd10")
RUN_JPEG = ("run", "--attack", "fgsm", "--defense", "none,jpeg")
CONFIG = ("run", "--config", "{tmp}/bad.json")
MNIST = ("run", "--dataset", "mnist", "--data-root", "{tmp}/data", "--attack", "fgsm")


def bad_magic(data: bytes) -> bytes:
    """An IDX file whose magic number says 'bytes of rank 2' (0x0802), not images (0x0803)."""
    return struct.pack(">i", 0x0802) + data[4:]


CASES: dict[str, Case] = {
    # -- classifier options ------------------------------------------------------------------
    "model-opt epochs=abc": Case((*RUN_FGSM, "--model-opt", "epochs=abc"),
                                 ("epochs", "'abc'", "--model-opt")),
    "model-opt epochs=0": Case((*RUN_FGSM, "--model-opt", "epochs=0"),
                               ("epochs=0", "--model-opt")),
    "model-opt lr=-1": Case((*RUN_FGSM, "--model-opt", "lr=-1"), ("lr=-1", "--model-opt")),
    "model-opt train_images=0": Case((*RUN_FGSM, "--model-opt", "train_images=0"),
                                     ("train_images=0", "--model-opt")),
    "model-opt surrogate cnn3x3.epochs=abc": Case(
        (*RUN_FGSM, "--model-opt", "cnn3x3.epochs=abc"), ("cnn3x3", "epochs", "'abc'")),
    "model-opt unknown scope cnnn.epochs=2": Case(
        (*RUN_FGSM, "--model-opt", "cnnn.epochs=2"), ("cnnn", "Did you mean", "'cnn'")),
    "model-opt config file epochs=abc": Case(
        CONFIG, ("epochs", "'abc'", "bad.json"),
        config_file('{"attacks": ["fgsm"], "model_opts": {"epochs": "abc"}}')),
    "train model-opt epochs=0": Case(("train", "--model-opt", "epochs=0"),
                                     ("epochs=0", "--model-opt"), results=False),
    "train model-opt epochs=abc": Case(("train", "--model-opt", "epochs=abc"),
                                       ("epochs", "'abc'", "--model-opt"), results=False),
    # -- attack options ----------------------------------------------------------------------
    "attack-opt steps=abc": Case((*RUN_PGD, "--attack-opt", "steps=abc"),
                                 ("steps", "'abc'", "pgd10.steps=")),
    "attack-opt steps=0": Case((*RUN_PGD, "--attack-opt", "steps=0"),
                               ("steps=0", "pgd10.steps=")),
    "attack-opt typo pgd10.stepz=3": Case((*RUN_PGD, "--attack-opt", "pgd10.stepz=3"),
                                          ("stepz", "Did you mean 'steps'")),
    "attack-opt scope not in grid pgd11.steps=3": Case(
        (*RUN_PGD, "--attack-opt", "pgd11.steps=3"), ("pgd11", "Did you mean", "'pgd10'")),
    "attack-opt scope registered not in grid pgd20.steps=3": Case(
        (*RUN_PGD, "--attack-opt", "pgd20.steps=3"), ("'pgd20'", "pgd10")),
    "attack-opt eps=0.1 is --eps": Case((*RUN_PGD, "--attack-opt", "eps=0.1"),
                                        ("--attack-opt eps", "--eps")),
    "attack-opt bare nobody takes stepz=3": Case((*RUN_PGD, "--attack-opt", "stepz=3"),
                                                 ("stepz", "Did you mean 'steps'")),
    # -- defense options ---------------------------------------------------------------------
    "defense-opt unknown scope lgdd.epochs=2": Case(
        (*RUN_JPEG, "--defense-opt", "lgdd.epochs=2"), ("lgdd", "Did you mean 'lgd'")),
    "defense-opt scope registered not in grid lgd.epochs=2": Case(
        (*RUN_JPEG, "--defense-opt", "lgd.epochs=2"), ("'lgd'", "none", "jpeg")),
    "defense-opt bare nobody takes qualty=50": Case(
        (*RUN_JPEG, "--defense-opt", "qualty=50"), ("qualty", "Did you mean 'quality'")),
    "defense-opt typo jpeg.qualty=50": Case(
        (*RUN_JPEG, "--defense-opt", "jpeg.qualty=50"), ("qualty", "Did you mean 'quality'")),
    "defense-opt typo none.kernl=5": Case(
        (*RUN_JPEG, "--defense-opt", "none.kernl=5"), ("kernl", "none")),
    "defense-opt jpeg.quality=abc": Case(
        (*RUN_JPEG, "--defense-opt", "jpeg.quality=abc"), ("quality", "'abc'", "jpeg.quality=")),
    "defense-opt jpeg.quality=0": Case(
        (*RUN_JPEG, "--defense-opt", "jpeg.quality=0"), ("quality=0", "jpeg.quality=")),
    # -- config files ------------------------------------------------------------------------
    "config not JSON": Case(CONFIG, ("bad.json", "JSON"), config_file("{attacks: fgsm")),
    "config JSON list": Case(CONFIG, ("bad.json", "list", "object"),
                             config_file('["fgsm"]')),
    "config unknown key": Case(CONFIG, ("epss", "Did you mean 'eps'", "bad.json"),
                               config_file('{"attacks": ["fgsm"], "epss": [0.1]}')),
    "config n string": Case(CONFIG, ("n ", "'abc'", "bad.json"),
                            config_file('{"attacks": ["fgsm"], "n": "abc"}')),
    "config eps list of junk": Case(CONFIG, ("eps", "'abc'", "bad.json"),
                                    config_file('{"attacks": ["fgsm"], "eps": ["abc"]}')),
    "config attacks number": Case(CONFIG, ("attacks", "5", "bad.json"),
                                  config_file('{"attacks": 5}')),
    "config seed float": Case(CONFIG, ("seed", "1.5", "bad.json"),
                              config_file('{"attacks": ["fgsm"], "seed": 1.5}')),
    "config defense_opts list": Case(CONFIG, ("defense_opts", "[1]", "bad.json"),
                                     config_file('{"attacks": ["fgsm"], "defense_opts": [1]}')),
    "config missing file": Case(("run", "--config", "{tmp}/absent.json"), ("absent.json",)),
    # -- paths -------------------------------------------------------------------------------
    "results below a regular file": Case(
        (*RUN_FGSM, "--results", "{tmp}/file/r.sqlite"), ("--results", "file", "folder"),
        regular_file("file"), results=False),
    "results is a folder": Case((*RUN_FGSM, "--results", "{tmp}/folder"),
                                ("--results", "folder", "file path"), folder("folder"),
                                results=False),
    "leaderboard out is a regular file": Case(
        ("leaderboard", "--results", "{tmp}/r.sqlite", "--out", "{tmp}/file"),
        ("--out", "file", "folder"), empty_store, results=False),
    "plot residual out below a regular file": Case(
        ("plot", "residual", "--defense", "median", "--attack", "fgsm", "--out", "{tmp}/file/x"),
        ("--out", "file", "folder"), regular_file("file"), results=False),
    "cache folder is a regular file": Case(RUN_FGSM, (ENV_CACHE, "file", "folder"),
                                           cache_is_file=True),
    "data-root is a regular file": Case(
        ("run", "--dataset", "mnist", "--data-root", "{tmp}/file", "--attack", "fgsm"),
        ("--data-root", "file"), regular_file("file")),
    # -- devices -----------------------------------------------------------------------------
    "device tpu": Case((*RUN_FGSM, "--device", "tpu"), ("tpu", "--device", "cpu")),
    "device cuda:7": Case((*RUN_FGSM, "--device", "cuda:7"), ("cuda:7", "--device cpu")),
    "device meta": Case((*RUN_FGSM, "--device", "meta"), ("meta", "--device", "cpu")),
    # -- data files --------------------------------------------------------------------------
    "mnist test images truncated": Case(
        MNIST, ("corrupt", "t10k-images-idx3-ubyte"),
        damaged_mnist("t10k-images-idx3-ubyte", lambda b: b[:1000]), not_says=("not found",)),
    "mnist test images bad magic": Case(
        MNIST, ("corrupt", "t10k-images-idx3-ubyte", "magic"),
        damaged_mnist("t10k-images-idx3-ubyte", bad_magic), not_says=("not found",)),
    "mnist train labels truncated": Case(
        MNIST, ("corrupt", "train-labels-idx1-ubyte"),
        damaged_mnist("train-labels-idx1-ubyte", lambda b: b[:6]), not_says=("not found",)),
    "mnist train images bad magic": Case(
        MNIST, ("corrupt", "train-images-idx3-ubyte", "magic"),
        damaged_mnist("train-images-idx3-ubyte", bad_magic), not_says=("not found",)),
    # -- step size, counts, eps --------------------------------------------------------------
    "alpha 0": Case((*RUN_FGSM, "--alpha", "0"), ("--alpha", "'0'", "2/255")),
    "alpha abc": Case((*RUN_FGSM, "--alpha", "abc"), ("--alpha", "'abc'", "/255")),
    "alpha 2": Case((*RUN_FGSM, "--alpha", "2"), ("--alpha", "'2'", "[0, 1]")),
    "n 0": Case((*RUN_FGSM, "--n", "0"), ("--n 0", "--n 100")),
    "n -3": Case((*RUN_FGSM, "--n", "-3"), ("--n -3", "--n 100")),
    "batch-size 0": Case((*RUN_FGSM, "--batch-size", "0"), ("--batch-size", "0", "positive")),
    "fit-images 0": Case((*RUN_FGSM, "--fit-images", "0"), ("--fit-images", "0", "positive")),
    "eps 2/0": Case((*RUN_FGSM, "--eps", "2/0"), ("'2/0'", "8/255")),
    "threat blackbox": Case((*RUN_FGSM, "--threat", "blackbox"),
                            ("'blackbox'", "oblivious", "whitebox")),
    "targeted sideways": Case((*RUN_FGSM, "--targeted", "sideways"),
                              ("'sideways'", "random", "least-likely")),
}


def _rows(db: Path) -> int:
    if not db.is_file():
        return 0
    con = sqlite3.connect(db)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'results'").fetchone():
            return 0
        return con.execute("SELECT count(*) FROM results").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh cache folder for this test (it may never be created), and the CLI's log handler
    bound to this test's captured stderr, as a user's terminal would show it."""
    path = tmp_path / "cache"
    monkeypatch.setenv(ENV_CACHE, str(path))
    monkeypatch.setattr(logging.getLogger("bench"), "handlers", [])
    return path


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_before_anything_trains(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        cache: Path, case: Case) -> None:
    if case.setup:
        case.setup(tmp_path)
    if case.cache_is_file:
        cache.write_text("not a folder\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    if case.results:
        argv += ["--results", str(tmp_path / "r.sqlite")]
    code, out, err = run_cli(capsys, *argv)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    line = lines[0]
    for word in case.says:
        assert word in line, f"{word!r} not in: {line}"
    for word in case.not_says:
        assert word not in line, line
    assert out == ""
    assert code == 2, err
    trained = sorted(str(p) for p in cache.rglob("*.safetensors")) if cache.is_dir() else []
    assert trained == []
    assert _rows(tmp_path / "r.sqlite") == 0


def test_alpha_takes_a_fraction_like_eps(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         cache: Path) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = run_cli(capsys, "run", "--attack", "fgsm", "--alpha", "2/255", "--n", "10",
                             "--model-opt", "epochs=1", "--eps", "0.1", "--threat", "oblivious",
                             "--results", str(db))
    assert code == 0, err
    assert "error" not in err
    frame = Store(db).frame()
    assert len(frame) == 1  # none (the baseline) x fgsm x oblivious x eps 0.1
    assert set(frame["attack"]) == {"fgsm"} and set(frame["threat"]) == {"oblivious"}
    for params in frame["attack_params"]:
        assert params["alpha"] == pytest.approx(2 / 255, rel=0, abs=1e-12)


def test_a_bare_defense_option_reaches_only_the_defenses_that_take_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, cache: Path) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = run_cli(capsys, "run", "--attack", "fgsm", "--defense", "jpeg,median",
                             "--defense-opt", "quality=50", "--n", "10", "--model-opt",
                             "epochs=1", "--eps", "0.1", "--threat", "oblivious",
                             "--results", str(db))
    assert code == 0, err
    params = {r.defense: r.defense_params for r in Store(db).frame().itertuples()}
    assert set(params) == {"none", "jpeg", "median"}
    assert params["jpeg"]["quality"] == 50
    assert "quality" not in params["median"] and "quality" not in params["none"]
