"""Plugins from a file or a folder (``--plugins PATH``, ``$BENCH_PLUGINS``, RunConfig.plugins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import plugin_files
from bench.config import RunConfig
from bench.errors import ConfigError, DuplicatePluginError, PluginImportError
from bench.registry import DEFENSES, REGISTRIES
from bench.testing.core import restored

BLUR = '''
"""A box blur: a one-file defense plugin."""
import torch.nn.functional as F

from bench.defense import Defense
from bench.registry import register_defense


@register_defense("{name}")
class Blur(Defense):
    """Box blur of a given kernel size."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, kernel: int = 3):
        super().__init__(input_shape, num_classes)
        self.kernel = kernel

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, stride=1, padding=self.kernel // 2,
                            count_include_pad=False)
'''


@pytest.fixture
def clean_plugins() -> Iterator[None]:
    """Every registry and the record of loaded plugin files restored after the test."""
    loaded = dict(plugin_files.LOADED)
    mods = set(sys.modules)
    with restored(*REGISTRIES.values()):
        yield
    plugin_files.LOADED.clear()
    plugin_files.LOADED.update(loaded)
    for name in set(sys.modules) - mods:
        if name.startswith(plugin_files.PACKAGE + "."):
            del sys.modules[name]


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_a_file_registers_its_plugins_once(tmp_path: Path, clean_plugins: None) -> None:
    path = write(tmp_path, "my_blur.py", BLUR.format(name="my-blur"))
    assert plugin_files.load_plugins([str(path)]) == ["bench_plugin_files.my_blur"]
    assert DEFENSES.build("my-blur").kernel == 3
    assert plugin_files.origin(DEFENSES.where("my-blur")) == str(path.resolve())
    assert plugin_files.origin(DEFENSES.where("jpeg")) == "built-in"
    plugin_files.load_plugins([str(path)])  # again: a no-op, not a duplicate registration
    assert DEFENSES.list("my-*") == ["my-blur"]


def test_a_folder_loads_its_public_files(tmp_path: Path, clean_plugins: None) -> None:
    write(tmp_path, "a.py", BLUR.format(name="blur-a"))
    write(tmp_path, "b.py", BLUR.format(name="blur-b"))
    write(tmp_path, "_helper.py", "raise RuntimeError('a helper is not a plugin')\n")
    plugin_files.load_plugins([str(tmp_path)])
    assert DEFENSES.list("blur-*") == ["blur-a", "blur-b"]


def test_a_clash_with_a_built_in_names_both_files(tmp_path: Path, clean_plugins: None) -> None:
    path = write(tmp_path, "mine.py", BLUR.format(name="jpeg"))
    with pytest.raises(DuplicatePluginError) as err:
        plugin_files.load_plugins([str(path)])
    builtin = Path(sys.modules[DEFENSES.where("jpeg")].__file__)
    assert f"in {builtin} and in {path.resolve()}" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("files", "message"), [
    ({}, "no such file or folder"),
    ({"notes.txt": "x"}, "not a Python file"),
    ({"empty.py": "x = 1\n"}, "registered nothing"),
    ({"broken.py": "import os\nraise ValueError('bad setting')\n"},
     r"failed to import \(line 2\): ValueError: bad setting"),
])
def test_bad_plugin_paths_are_one_line_errors(tmp_path: Path, clean_plugins: None,
                                              files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    target = tmp_path / (next(iter(files)) if files else "missing.py")
    with pytest.raises((ConfigError, PluginImportError), match=message) as err:
        plugin_files.load_plugins([str(target)])
    assert "\n" not in str(err.value)


def test_two_files_with_one_name_are_refused(tmp_path: Path, clean_plugins: None) -> None:
    a = write(tmp_path / "x", "blur.py", BLUR.format(name="blur-x"))
    b = write(tmp_path / "y", "blur.py", BLUR.format(name="blur-y"))
    plugin_files.load_plugins([str(a)])
    with pytest.raises(ConfigError, match="Two plugin files are named blur.py"):
        plugin_files.load_plugins([str(b)])


def test_runconfig_plugins_from_a_config_file_are_relative_to_it(tmp_path: Path) -> None:
    cfg_file = tmp_path / "grid" / "run.json"
    cfg_file.parent.mkdir()
    cfg_file.write_text(json.dumps({"attacks": ["fgsm"], "plugins": ["plugins/blur.py"]}))
    cfg = RunConfig.resolve({"plugins": ["extra.py"]}, cfg_file)
    assert cfg.plugins == (str(cfg_file.parent / "plugins" / "blur.py"), "extra.py")
    assert RunConfig(plugins=f"a.py{os.pathsep}b").plugins == ("a.py", "b")  # as the variable


def _bench(cwd: Path, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                    **(env or {})}, timeout=600)


def test_list_shows_where_each_entry_comes_from(tmp_path: Path) -> None:
    write(tmp_path, "my_blur.py", BLUR.format(name="my-blur"))
    out = _bench(tmp_path, "list", "defenses", "--plugins", "my_blur.py")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()}
    assert lines["my-blur"][2] == str((tmp_path / "my_blur.py").resolve())
    assert lines["jpeg"][2] == "built-in"
    env = _bench(tmp_path, "list", "defenses", "my-*", env={"BENCH_PLUGINS": str(tmp_path)})
    assert env.stdout.split()[0] == "my-blur", env.stderr


def test_a_clash_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    write(tmp_path, "mine.py", BLUR.format(name="median"))
    out = _bench(tmp_path, "run", "--plugins", "mine.py", "--defense", "median",
                 "--attack", "fgsm", "--dry-run")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "median.py and in " + str((tmp_path / "mine.py").resolve()) in out.stderr


@pytest.mark.slow
def test_run_with_a_plugin_file_from_a_folder_holding_only_it(tmp_path: Path) -> None:
    """The documented one-file plugin: ``bench run --plugins my_blur.py --defense my-blur``."""
    write(tmp_path, "my_blur.py", BLUR.format(name="my-blur"))
    env = {"BENCH_RESULTS": str(tmp_path / "results.sqlite")}
    out = _bench(tmp_path, "run", "--plugins", "my_blur.py", "--defense", "my-blur",
                 "--attack", "fgsm", "--n", "40", env=env)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| digits")]
    assert [r.split("|")[3].strip() for r in rows] == ["none", "my-blur"]
    again = _bench(tmp_path, "run", "--plugins", "my_blur.py", "--defense", "my-blur",
                   "--attack", "fgsm", "--n", "40", "--dry-run", env=env)
    assert "4 cells: 4 stored" in again.stdout, again.stderr
