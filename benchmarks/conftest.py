"""The benchmark suite (pytest-benchmark): every benchmark measures two things side by side in one
run and records their ratio; the ratios, with their targets, are printed at the end.

Run it: ``python -m pytest benchmarks -p no:randomly`` (full size, minutes; on a quiet machine).
``--bench-size tiny`` runs every benchmark at a size that only proves it still works (CI does,
through ``tests/test_benchmarks.py``); the numbers of a tiny run mean nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-size", choices=("tiny", "full"),
                     default=os.environ.get("BENCH_BENCH_SIZE", "full"),
                     help="tiny: a smoke run (CI); full: the sizes docs/performance.md reports")
    parser.addoption("--bench-device", default="cpu",
                     help="the device the benchmarks run on: cpu (default), cuda, cuda:N")
    parser.addoption("--bench-weights", default=os.environ.get("BENCH_BENCH_WEIGHTS"),
                     help="a cache folder (e.g. ~/.cache/bench) whose trained classifiers and "
                          "defenses are copied into the benchmarks' own cache first, so that "
                          "at-pgd is not trained again (weights are keyed: only matching ones "
                          "are used)")


@dataclass
class Ratio:
    name: str
    value: float
    target: str
    met: bool | None
    detail: str


RATIOS: list[Ratio] = []


class Recorder:
    """What a benchmark reports: ``ratio(name, value, target, met, detail)``."""

    def __init__(self, size: str, device: str = "cpu") -> None:
        self.size = size
        self.device = device

    @property
    def tiny(self) -> bool:
        return self.size == "tiny"

    def ratio(self, name: str, value: float, target: str, met: bool | None,
              detail: str = "") -> None:
        RATIOS.append(Ratio(name, value, target, met, detail))


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Recorder:
    return Recorder(request.config.getoption("--bench-size"),
                    request.config.getoption("--bench-device"))


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Path]:
    """A cache of its own for the whole run (classifiers trained once), never the user's."""
    path = tmp_path_factory.mktemp("bench-benchmarks")
    source = request.config.getoption("--bench-weights")
    if source:
        import shutil

        for kind in ("classifiers", "defenses"):
            if (Path(source).expanduser() / kind).is_dir():
                shutil.copytree(Path(source).expanduser() / kind, path / "cache" / kind)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(path / "cache"))
        yield path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RATIOS:
        return
    tr = terminalreporter
    tr.section("bench ratios")
    tr.write_line(f"{'benchmark':58} {'ratio':>9}  {'target':18} met")
    for r in RATIOS:
        met = "n/a" if r.met is None else ("yes" if r.met else "NO")
        tr.write_line(f"{r.name:58} {r.value:9.3f}  {r.target:18} {met}")
        if r.detail:
            tr.write_line(f"    {r.detail}")
