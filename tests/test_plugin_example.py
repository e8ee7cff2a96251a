"""The plugin package example of docs/plugins.md, followed literally: its ``pyproject.toml`` and
its module (the docs' ``blur.py``) come from the docs' blocks (:mod:`tests.test_docs`), it is
installed editable with the docs' own command, and the docs' commands (the block marked
``<!-- run by: tests/test_plugin_example.py -->``) are run from the folder it was installed from
(where a folder named like the module would shadow it; that folder also holds packages named
``defenses`` and ``attacks``, which must not hide the built-ins).

Each install goes into a throwaway virtual environment that sees the test environment's packages
through a ``.pth`` file, so the environment running the tests is never modified (and no network
is needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_docs import ALL, commands, doc_file

FAST = ["--n", "40", "--eps", "0.2", "--model-opt", "epochs=1"]  # appended: argparse's last wins
MARK = "tests/test_plugin_example.py"


def example_files() -> dict[str, str]:
    """The package's files: its pyproject.toml, and blur.py as its module."""
    return {"bench-blur/pyproject.toml": doc_file("bench-blur/pyproject.toml"),
            "bench-blur/src/bench_blur/__init__.py": doc_file("blur.py")}


def example_commands() -> list[list[str]]:
    """The commands of the one block this test runs."""
    blocks = [b for b in ALL if b.mark == "run by" and b.arg == MARK]
    assert len(blocks) == 1, f"the docs need exactly one block marked <!-- run by: {MARK} -->"
    return [c.argv for c in commands(blocks[0].body)]


def throwaway_venv(root: Path) -> Path:
    """A venv without pip whose interpreter also sees this environment's packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def pip_install(python: Path, args: list[str], cwd: Path) -> None:
    """Run the docs' ``pip install ...`` for the throwaway interpreter ``python``."""
    assert args[:2] == ["pip", "install"], args
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    probe = subprocess.run([*pip, "--version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:  # pip < 22.3 has no --python; the parent's pip runs under `python`
        pip = [str(python), "-m", "pip"]
    proc = subprocess.run([*pip, "install", "--no-build-isolation", "--no-deps", "--no-index",
                           "--disable-pip-version-check", *args[2:]],
                          cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"


def bench(python: Path, args: list[str], cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` with a private cache and results store."""
    assert args[:3] == ["python", "-m", "bench"], args
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp / "cache"),
           "BENCH_RESULTS": str(tmp / "r.sqlite"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(python), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_docs_plugin_package_installs_lists_and_runs(tmp_path: Path) -> None:
    files = example_files()
    work = tmp_path / "work"  # the folder holding bench-blur/, where every command runs
    for shadow in ("defenses", "attacks"):  # a user's own folders, named like our plugin packages
        (work / shadow).mkdir(parents=True)
        (work / shadow / "__init__.py").write_text("")
    for rel, body in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(body)
    install, listing, run = example_commands()
    assert install == ["pip", "install", "-e", "bench-blur"]
    python = throwaway_venv(tmp_path / "venv")
    pip_install(python, install, work)

    assert listing == ["python", "-m", "bench", "list", "defenses", "blur*"]
    proc = bench(python, listing, work, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["blur3", "blur5"]
    proc = bench(python, ["python", "-m", "bench", "-q", "check", "blur3", "blur5"], work, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # the contract kit
    assert "FAIL" not in proc.stdout and proc.stdout.count("PASS defense blur") == 12

    assert run[:3] == ["python", "-m", "bench"] and run[3] == "run"
    assert "blur3,jpeg" in run and "quality=50" in run
    proc = bench(python, run + FAST, work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert any("blur3" in r for r in rows) and any("jpeg" in r for r in rows), proc.stdout

    typo = ["python", "-m", "bench", "run", "--defense", "blur3", "--defense-opt",
            "blur3.kernl=5", "--attack", "fgsm", "--n", "40"]
    proc = bench(python, typo, work, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = error_lines(proc)
    assert len(errors) == 1 and "kernl" in errors[0], proc.stderr


OLD_PYPROJECT = """\
[project]
name = "my-defense"
version = "0.1"
dependencies = ["advdefense-bench"]

[project.entry-points."bench.defenses"]
my_defense = "my_defense"
"""

OLD_MODULE = '''\
"""Blur: a 3x3 box filter in front of the classifier."""
import torch.nn.functional as F

from bench.defense import Defense
from bench.registry import register_defense


@register_defense("blur3", kernel=3)
class Blur(Defense):
    """Box blur. Example: python -m bench run --defense blur3"""

    def __init__(self, kernel=3, **kw):
        super().__init__(**kw)
        self.kernel = kernel

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, stride=1, padding=1, count_include_pad=False)
'''


@pytest.mark.slow
def test_shadowed_plugin_module_is_an_error_naming_the_package(tmp_path: Path) -> None:
    """A layout without ``src/``: the folder ``my_defense/`` (no ``__init__.py``) in the current
    directory shadows the installed module ``my_defense`` as an empty namespace package, so the
    entry point loads and registers nothing: an error naming the package, not an empty list."""
    work = tmp_path / "work"
    (work / "my_defense").mkdir(parents=True)
    (work / "my_defense" / "pyproject.toml").write_text(OLD_PYPROJECT)
    (work / "my_defense" / "my_defense.py").write_text(OLD_MODULE)
    python = throwaway_venv(tmp_path / "venv")
    pip_install(python, ["pip", "install", "-e", "my_defense"], work)
    proc = bench(python, ["python", "-m", "bench", "list", "defenses", "blur*"], work, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr
    assert "'my_defense' (my_defense, package my-defense) loaded but registered no" in errors[0]
