"""Every command and code block of README.md and docs/*.md is run or checked here, unless the
line right above its opening fence marks it otherwise (docs/architecture.md, "The docs and their
test", documents the convention):

    <!-- not run: REASON -->      shown, never run
    <!-- parse only: REASON -->   its ``python -m bench`` commands parsed, names and options checked
    <!-- file: PATH -->           the block is the file PATH, written where the page's commands run
    <!-- run by: TEST_FILE -->    another test runs it (tests/test_plugin_example.py)

Unmarked ``bash`` blocks: each ``python -m bench`` command is parsed with the real parser; ``run``
is executed with ``--dry-run``; ``list``, ``check --list`` and ``leaderboard`` run for real;
``check NAME``, ``train``, ``audit`` and ``plot`` are validated as the command would before doing
anything. ``pip install`` must name existing extras, ``python -m pytest`` registered markers,
options and existing paths; any other command fails. ``python`` blocks run in a fresh interpreter
(slow), ``json``/``toml`` blocks are parsed. The plugin files of the docs are loaded, checked by
the contract kit and run (slow). Links between pages and their anchors must resolve.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
TEST_COMMAND = 'python -m pytest -m "slow or not slow"'  # CI runs the README's test command
SHELLS = ("bash", "sh", "shell", "console")
MARKS = ("not run", "parse only", "file", "run by")
FAST = ["--n", "40", "--model-opt", "epochs=1"]  # appended to real runs: argparse's last wins
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARK = re.compile(r"^<!--\s*(?P<kind>[a-z ]+?)\s*:\s*(?P<arg>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and the mark above it."""

    page: Path
    line: int  # the opening fence's line, from 1
    lang: str
    body: str
    mark: str | None = None  # one of MARKS, or None
    arg: str = ""  # the mark's reason, file path or test file

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def parse_page(page: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``page`` and the problems of its marks (unknown mark, no reason,
    unclosed fence)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        end = next((j for j in range(i + 1, len(lines))
                    if re.fullmatch(rf" *{re.escape(fence[0])}{{{len(fence)},}} *", lines[j])),
                   None)
        where = f"{page.relative_to(REPO)}:{i + 1}"
        if end is None:
            problems.append(f"{where}: the fence is never closed")
            break
        body = "".join(line[indent:] + "\n" for line in lines[i + 1:end])
        mark, arg = None, ""
        above = lines[i - 1].strip() if i else ""
        if above.startswith("<!--"):
            mm = MARK.match(above)
            if not mm or mm["kind"] not in MARKS:
                problems.append(f"{where}: unknown mark {above!r}: use one of "
                                + ", ".join(f"<!-- {k}: ... -->" for k in MARKS))
            elif not mm["arg"]:
                problems.append(f"{where}: the mark {above!r} needs a reason, path or test")
            else:
                mark, arg = mm["kind"], mm["arg"]
        lang = (m["info"].split() or [""])[0].lower()
        blocks.append(Block(page, i + 1, lang, body, mark, arg))
        i = end + 1
    return blocks, problems


ALL = [b for page in PAGES for b in parse_page(page)[0]]


def blocks_where(pred: Any) -> list[Any]:
    return [pytest.param(b, id=b.id) for b in ALL if pred(b)]


def doc_file(path: str) -> str:
    """The text of the block marked ``<!-- file: path -->`` (the same on every page)."""
    bodies = {b.body for b in ALL if b.mark == "file" and b.arg == path}
    assert len(bodies) == 1, f"{path}: {len(bodies)} different blocks are marked as this file"
    return bodies.pop()


def write_files(page: Path, folder: Path) -> None:
    """The ``file:`` blocks of ``page`` (and those of README.md, which the pages build on)."""
    for b in ALL:
        if b.mark == "file" and b.page in (page, REPO / "README.md"):
            (folder / b.arg).parent.mkdir(parents=True, exist_ok=True)
            (folder / b.arg).write_text(b.body, encoding="utf-8")


@dataclass(frozen=True)
class Command:
    env: dict[str, str]
    argv: list[str]
    text: str


def commands(body: str) -> list[Command]:
    """The commands of a shell block: continuations joined, comments dropped, ``VAR=value``
    prefixes taken as the command's environment."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words:
            out.append(Command(env, words, " ".join(line.split())))
    return out


def data_root() -> Path:
    """``$BENCH_DATA_ROOT``, else ``../shared/data`` beside the repository (as CI sets it)."""
    env = os.environ.get("BENCH_DATA_ROOT")
    return Path(env) if env else REPO.parent / "shared" / "data"


def with_repo_paths(argv: list[str]) -> list[str]:
    """``--data-root DIR`` with a relative DIR read from the repository root (the docs' commands
    run from a checkout); the shared data root when that folder does not exist. A relative
    ``--config FILE`` that the repository holds (``nightly/mnist.json``) is read from it too."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word == "--data-root" and not Path(out[i + 1]).is_absolute():
            path = (REPO / out[i + 1]).resolve()
            out[i + 1] = str(path if path.is_dir() else data_root())
        elif word == "--config" and (REPO / out[i + 1]).is_file():
            out[i + 1] = str(REPO / out[i + 1])
    return out


def need_mnist(argv: list[str]) -> None:
    """Skip (fail under CI) a command on MNIST when its files are missing."""
    datasets = [argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--dataset"]
    roots = [argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--data-root"] or [data_root()]
    if any("mnist" in d.split(",") for d in datasets) and not (
            Path(roots[-1]) / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        message = f"MNIST files not found under {roots[-1]} (set BENCH_DATA_ROOT)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must have them")
        pytest.skip(message)


@contextlib.contextmanager
def isolated_plugins() -> Iterator[None]:
    """Plugins a command loads (``--plugins``) are gone afterwards: registries, loaded files and
    their modules restored."""
    from bench import plugin_files
    from bench.registry import REGISTRIES
    from bench.testing import restored

    loaded = dict(plugin_files.LOADED)
    with restored(*REGISTRIES.values()):
        try:
            yield
        finally:
            for name in set(plugin_files.LOADED) - set(loaded):
                sys.modules.pop(name, None)
            plugin_files.LOADED.clear()
            plugin_files.LOADED.update(loaded)


def check_names(names: list[str]) -> None:
    """Each of ``names`` is a registered defense or attack (``bench check NAME``)."""
    from bench.registry import ATTACKS, DEFENSES

    for name in names:
        if name not in DEFENSES and name not in ATTACKS:
            DEFENSES.get(name)  # the registry's error, with the closest names


class BenchCommands:
    """Checks ``python -m bench`` commands in this process (see the module docstring)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                 ) -> None:
        self.capsys, self.monkeypatch = capsys, monkeypatch

    def check(self, block: Block, cmd: Command) -> None:
        from bench.cli import build_parser, main

        argv = with_repo_paths(cmd.argv[3:])
        what = f"{block.id}: `{cmd.text}`"
        with self.monkeypatch.context() as mp:
            for key, value in cmd.env.items():
                mp.setenv(key, value)
            self.capsys.readouterr()
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as exc:
                args, code = None, exc.code
            if args is None:  # --help (0), or the parser's one-line error (2)
                assert code == 0, f"{what} does not parse:\n{self.capsys.readouterr().err}"
                return
            if block.mark == "parse only":
                from bench.errors import BenchError

                with isolated_plugins():
                    try:
                        self.registered(args, what)
                    except BenchError as exc:
                        pytest.fail(f"{what}: error: {exc}")
                return
            need_mnist(argv)
            with isolated_plugins():
                if args.command == "run":
                    code = main([*argv, *([] if args.dry_run else ["--dry-run"])])
                elif args.command in ("list", "leaderboard") or getattr(args, "list", False):
                    code = main(argv)
                else:
                    code = self.validated(args, what)
            out = self.capsys.readouterr()
            assert code == 0, f"{what} failed (exit status {code}):\n{out.err[-3000:]}"
            assert "Traceback" not in out.err, f"{what}:\n{out.err[-3000:]}"

    def registered(self, args: Any, what: str) -> None:
        """Parse-only: every plugin name and scoped option is registered (no data, no device)."""
        from bench.arguments import run_config
        from bench.options import _takes
        from bench.plugin_files import env_paths, load_plugins
        from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS
        from bench.threat import Threat

        load_plugins([*env_paths(), *(getattr(args, "plugins", None) or [])])
        if args.command == "check":
            check_names(args.names)
            return
        cfg = run_config(args)
        for registry, names in ((DATASETS, cfg.datasets), (MODELS, cfg.models),
                                (DEFENSES, cfg.defenses), (ATTACKS, cfg.attacks)):
            for name in names:
                registry.get(name)
        for threat in cfg.threats:
            Threat.parse(threat)
        for kind, opts in (("defense", cfg.defense_opts), ("attack", cfg.attack_opts),
                           ("model", cfg.model_opts)):
            for key in opts:
                scope, _, param = key.rpartition(".")
                takes = _takes(kind, scope) if scope else None
                assert takes is None or param in takes, f"{what}: {scope} takes no {param}"

    def validated(self, args: Any, what: str) -> int:
        """What ``train``, ``audit``, ``plot`` and ``check NAME`` check before they run."""
        from bench import cli
        from bench.analysis import sweep
        from bench.arguments import run_config
        from bench.config import parse_eps
        from bench.errors import BenchError
        from bench.plan import Planner
        from bench.plugin_files import env_paths, load_plugins
        from bench.session import Session

        try:
            load_plugins([*env_paths(), *(getattr(args, "plugins", None) or [])])
            if args.command == "check":
                check_names(args.names)
            elif args.command == "plot" and args.plot == "sweep":
                cfg = run_config(args)
                sweep.parse_values(sweep.parse_param(args.param, cfg), args.values)
                Planner(cfg).sessions()
            elif args.command == "plot":
                list(cli._sessions(args, args.plot))
            elif args.command in ("train", "audit"):
                cfg = run_config(args, defenses=()) if args.command == "train" else run_config(
                    args, n=200)
                if args.command == "audit" and args.eps is not None:
                    parse_eps(args.eps)
                for ds in cfg.datasets:
                    for model in cfg.models or [None]:
                        Session.for_config(cfg, ds, model).validate(cfg.defenses)
            else:
                pytest.fail(f"{what}: no check for the command {args.command!r}")
        except BenchError as exc:
            pytest.fail(f"{what}: error: {exc}")
        return 0


def check_pip(block: Block, cmd: Command) -> None:
    """``pip install -e .`` or ``-e ".[EXTRAS]"``: the extras exist in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    what = f"{block.id}: `{cmd.text}`"
    m = re.fullmatch(r"pip install -e \.(?:\[([\w,-]+)\])?", " ".join(cmd.argv))
    assert m, f"{what}: only `pip install -e .[EXTRAS]` is checked here; mark the block"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    unknown = set((m[1] or "").split(",")) - set(extras) - {""}
    assert not unknown, f"{what}: no extra {sorted(unknown)} in pyproject.toml ({sorted(extras)})"


PYTEST_FLAGS = {"-q": 0, "-x": 0, "-ra": 0, "-v": 0, "--co": 0, "-m": 1, "-k": 1, "-p": 1,
                "--pyargs": 0}


def check_pytest(block: Block, cmd: Command) -> None:
    """Markers registered, options known (pytest's own or a conftest's), paths and modules
    found."""
    tomllib = pytest.importorskip("tomllib")
    what = f"{block.id}: `{cmd.text}`"
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = {m.split(":")[0].strip() for m in ini["markers"]}
    custom = {o for conftest in REPO.glob("*/conftest.py")
              for o in re.findall(r"addoption\(\s*[\"'](--[\w-]+)", conftest.read_text())}
    words, pyargs = cmd.argv[3:], "--pyargs" in cmd.argv
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-m":
            names = set(re.findall(r"[A-Za-z_]\w*", words[i + 1])) - {"and", "or", "not"}
            assert names <= markers, f"{what}: unregistered markers {sorted(names - markers)}"
        if word in PYTEST_FLAGS or word in custom:
            i += 1 + PYTEST_FLAGS.get(word, 1)  # a conftest's option takes a value
            continue
        assert not word.startswith("-"), f"{what}: unknown pytest option {word}"
        if pyargs:
            assert importlib.util.find_spec(word), f"{what}: no module {word}"
        else:
            assert (REPO / word.split("::")[0]).exists(), f"{what}: no path {word}"
        i += 1


def check_shell(block: Block, bench: BenchCommands) -> None:
    cmds = commands(block.body)
    assert cmds, f"{block.id}: an empty shell block"
    for cmd in cmds:
        if cmd.argv[:3] == ["python", "-m", "bench"]:
            bench.check(block, cmd)
        elif block.mark == "parse only":
            pytest.fail(f"{block.id}: a parse-only block holds `python -m bench` commands only")
        elif cmd.argv[:2] == ["pip", "install"]:
            check_pip(block, cmd)
        elif cmd.argv[:3] == ["python", "-m", "pytest"]:
            check_pytest(block, cmd)
        else:
            pytest.fail(f"{block.id}: cannot check `{cmd.text}`: make it a command this test "
                        f"checks, or mark the block (<!-- not run: why -->)")


# -- the fast checks --------------------------------------------------------------------------

def test_marks_are_known_and_every_block_is_checked_or_marked() -> None:
    problems = [p for page in PAGES for p in parse_page(page)[1]]
    runnable = (*SHELLS, "python", "json", "toml")
    problems += [f"{b.id}: a {b.lang or 'plain'} block is not checked: mark it "
                 f"(<!-- not run: why -->)" for b in ALL if b.mark is None and b.lang not in
                 runnable]
    problems += [f"{b.id}: `parse only` marks a shell block" for b in ALL
                 if b.mark == "parse only" and b.lang not in SHELLS]
    for b in ALL:
        if b.mark == "file":
            if Path(b.arg).is_absolute() or ".." in Path(b.arg).parts:
                problems.append(f"{b.id}: file {b.arg} must be a relative path")
            elif len({c.body for c in ALL if c.mark == "file" and c.arg == b.arg}) > 1:
                problems.append(f"{b.id}: the blocks of file {b.arg} differ between pages")
        if b.mark == "run by" and not (REPO / b.arg).is_file():
            problems.append(f"{b.id}: {b.arg} does not exist")
    assert not problems, "\n".join(problems)


def test_every_doc_file_is_used() -> None:
    """A ``file:`` block is read by a command of the docs or by a test that names it."""
    text = " ".join(b.body for b in ALL if b.lang in SHELLS)
    tests = " ".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    unused = [b.id for b in ALL if b.mark == "file"
              and Path(b.arg).parts[0] not in text and b.arg not in tests]
    assert not unused, f"file blocks no command or test uses: {unused}"


def test_the_readme_holds_the_test_command_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"\n{TEST_COMMAND}\n" in readme, f"README.md lost its test command {TEST_COMMAND}"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == TEST_COMMAND, f".ci/run's last line is {ci[-1]!r}, not the README's"
    assert TEST_COMMAND in (REPO / "tox.ini").read_text()


@pytest.mark.parametrize("block", blocks_where(
    lambda b: b.lang in SHELLS and b.mark in (None, "parse only")))
def test_shell_block(block: Block, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch, docs_store: Path) -> None:
    write_files(block.page, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_RESULTS", str(docs_store))
    monkeypatch.setenv("BENCH_DATA_ROOT", str(data_root()))
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)
    check_shell(block, BenchCommands(capsys, monkeypatch))


@pytest.mark.parametrize("block", blocks_where(lambda b: b.lang in ("json", "toml")))
def test_data_block_parses(block: Block) -> None:
    if block.lang == "toml":
        pytest.importorskip("tomllib").loads(block.body)
        return
    from bench.config import RunConfig

    RunConfig(**json.loads(block.body))  # a config file: RunConfig fields, checked


def prose(page: Path) -> str:
    """``page`` without its fenced blocks."""
    return re.sub(r"^ *```.*?^ *```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.parametrize("page", [pytest.param(p, id=p.name) for p in PAGES])
def test_inline_commands_parse(page: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``python -m bench ...`` span of the prose parses and names registered plugins, as a
    parse-only block. A span with a placeholder (``...``, ``NAME``) is a pattern, not a command;
    ``python -m bench WORD`` names a command, which must exist."""
    from bench.cli import build_parser

    write_files(page, tmp_path)
    monkeypatch.chdir(tmp_path)
    commands_ = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    bench = BenchCommands(capsys, monkeypatch)
    for span in re.findall(r"`(python -m bench(?:\s[^`]*)?)`", prose(page)):
        words = span.split()
        if "..." in span or any(re.fullmatch(r"[A-Z][A-Z_]+", w) for w in words):
            continue
        assert len(words) == 3 or words[3] in commands_, f"{page.name}: `{span}`: no such command"
        if len(words) > 4:
            bench.check(Block(page, 0, "bash", span, "parse only"), Command({}, words, span))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            base = slug(line.lstrip("#"))
            name, k = base, 0
            while name in out:
                k += 1
                name = f"{base}-{k}"
            out.add(name)
    return out


@pytest.mark.parametrize("page", [pytest.param(p, id=p.name) for p in PAGES])
def test_links_resolve(page: Path) -> None:
    text = prose(page)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https://...
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(REPO)}:\n" + "\n".join(broken)


@pytest.fixture(scope="module")
def docs_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real store (two defenses, one attack, both threats on digits) that the docs'
    ``leaderboard`` commands render."""
    from bench.cli import main

    path = tmp_path_factory.mktemp("docs-store") / "bench.sqlite"
    code = main(["-q", "run", "--defense", "none,jpeg", "--attack", "fgsm", "--eps", "0.2",
                 "--results", str(path), *FAST])
    assert code == 0
    return path


# -- the slow checks: python blocks and the plugin examples, really run -----------------------

def run_python(args: list[str], cwd: Path, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "BENCH_PLUGINS"}
    full.update(OMP_NUM_THREADS="1", BENCH_RESULTS=str(cwd / "bench.sqlite"),
                BENCH_DATA_ROOT=str(data_root()), **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=900, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("block", blocks_where(lambda b: b.lang == "python" and b.mark is None))
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    write_files(block.page, tmp_path)
    proc = run_python(["-c", block.body], tmp_path)
    assert proc.returncode == 0, f"{block.id}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def plugin_commands() -> list[tuple[Block, Command]]:
    """The docs' commands that load plugin files (``--plugins`` or ``$BENCH_PLUGINS``)."""
    return [(b, c) for b in ALL if b.lang in SHELLS and b.mark is None
            for c in commands(b.body) if "--plugins" in c.argv or "BENCH_PLUGINS" in c.env]


@pytest.mark.slow
@pytest.mark.parametrize(("block", "cmd"), [pytest.param(b, c, id=f"{b.id}:{c.argv[3]}")
                                            for b, c in plugin_commands()])
def test_plugin_command_really_runs(block: Block, cmd: Command, tmp_path: Path) -> None:
    """Each command of the plugin examples, run as a user runs it: ``check`` runs the contract
    kit on the docs' plugin files, ``run`` a small real grid with them, pytest the kit's tests."""
    write_files(block.page, tmp_path)
    argv = cmd.argv[1:] + (FAST if cmd.argv[3:4] == ["run"] else [])
    proc = run_python(argv, tmp_path, cmd.env)
    what = f"{block.id}: `{cmd.text}`"
    assert proc.returncode == 0, f"{what}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{what}:\n{proc.stderr[-3000:]}"
    names = {n for i, w in enumerate(cmd.argv) if w in ("--defense", "--attack")
             for n in cmd.argv[i + 1].split(",")}
    if cmd.argv[3:4] == ["check"]:
        assert "FAIL" not in proc.stdout and " 0 failed" in proc.stdout, proc.stdout[-3000:]
    if cmd.argv[3:4] == ["run"]:
        rows = [r for r in proc.stdout.splitlines() if r.startswith("|")]
        assert all(any(n in r for r in rows) for n in names), proc.stdout[-3000:]


@pytest.mark.slow
def test_plugin_file_errors_are_one_line(tmp_path: Path) -> None:
    """What the docs promise of a plugin file: a typo in an option and a name clash with a
    built-in are one ``error:`` line each (the clash naming both files)."""
    (tmp_path / "blur.py").write_text(doc_file("blur.py"))
    (tmp_path / "clash.py").write_text(doc_file("blur.py").replace('"blur3"', '"jpeg"'))
    typo = run_python(["-m", "bench", "run", "--plugins", "blur.py", "--defense", "blur3",
                       "--defense-opt", "blur3.kernl=5", "--attack", "fgsm", "--dry-run"],
                      tmp_path)
    clash = run_python(["-m", "bench", "list", "defenses", "--plugins", "clash.py"], tmp_path)
    for proc, word in ((typo, "kernl"), (clash, "clash.py")):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(errors) == 1 and word in errors[0], proc.stderr
    assert "jpeg.py" in clash.stderr


# Prose speaks of the software, never of how it was developed: no issue references, no commit
# hashes (a 7-40 digit hex word with at least one letter and one digit), no pointer to design
# notes outside the repository. Digests the software prints (``blur-4b0bccf5``) are joined to a
# name by a dash, which the pattern does not take for a hash.
HISTORY = re.compile(r"\bissues? #?\d+|(?<![\w-])#\d+\b|\bcommit\s+[0-9a-f]{7,}|DESIGN\.md"
                     r"|(?<![\w/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}(?![\w-])",
                     re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_prose_has_no_development_history(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # prose only
    found = [m.group(0) for m in HISTORY.finditer(text)]
    assert not found, f"{page.name}: development history in prose: {found}"
