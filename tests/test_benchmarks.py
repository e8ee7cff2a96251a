"""The benchmark suite cannot rot: it runs here at its tiny size (numbers meaningless) and must
pass and print its ratios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_benchmark_suite_runs_at_its_tiny_size_and_prints_ratios(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--bench-size", "tiny",
                          "-p", "no:cacheprovider", "-q"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "bench ratios" in out.stdout and "per hash" in out.stdout, out.stdout[-3000:]
