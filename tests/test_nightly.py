"""The nightly cannot rot: its workflow, config files and GPU check are checked and run here.

``.github/workflows/nightly.yml`` runs ``nightly/gpu_check.sh`` first, then one ``python -m bench
run --config nightly/FILE.json`` per grid, the audit and the plots as one-line commands, and the
leaderboard. These tests parse the workflow, check that its steps fit together (every config file
is named, the leaderboard reads the store the runs wrote, the plots land where the HTML page
embeds them), and run every one of its commands in order on CPU at a smoke size: the same command
with a few options appended (:func:`smoke_argv`: a handful of images, one epoch, two attack steps)
on tiny data files written here in the real on-disk formats. A renamed defense, attack or option
in a config file or the workflow fails here, not a night on the GPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bench.arguments import run_config
from bench.cli import build_parser, main
from bench.config import RunConfig
from bench.defense import split_spec
from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS
from bench.testing.attack_contract import BUDGET as ATTACK_BUDGET
from bench.testing.defense_contract import BUDGET as DEFENSE_BUDGET
from bench.testing.tiny import budget_options
from tests.bench.helpers import write_mnist
from tests.bench.test_data import write_cifar10, write_imagenet

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "nightly.yml"
NIGHTLY = REPO / "nightly"
GPU_CHECK = NIGHTLY / "gpu_check.sh"
COMPARE = NIGHTLY / "compare_stores.py"
GPU_CHECK_STEP = "bash nightly/gpu_check.sh"
GPU_CONDITION = "steps.gpu.outcome == 'success'"
BENCH = re.compile(r"""(?:^|\s)(?:python|"\$PYTHON") -m bench (.*)$""")

# The smoke size: what is appended to a command whose subcommand takes the option (steps and
# n_queries: the audit's own attacks).
SMOKE = {"device": "cpu", "n": "2", "fit_images": "2", "eot": "2", "eval_draws": "2",
         "steps": "2", "n_queries": "20"}
MODEL_BUDGET = {"epochs": 1, "train_images": 8}
# A U-net's two width lists (the HGD family's), narrowest: at full width its training is what
# would make ImageNet's 299 px smoke run take minutes.
UNET_WIDTHS = {"widths": "4,4,4,4,4", "feedback_widths": "4,4,4,4"}


@dataclass(frozen=True)
class Command:
    """One ``python -m bench ...`` line of a workflow step (``argv`` after ``bench``)."""

    step: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.step}: python -m bench {shlex.join(self.argv)}"

    @property
    def kind(self) -> str:
        """The subcommand: run, audit, plot, leaderboard..."""
        return parse(self.argv).command


def _lines(script: str) -> list[str]:
    """The shell commands of ``script``: continuation lines joined, ``&&`` chains split."""
    joined = script.replace("\\\n", " ")
    return [part.strip() for line in joined.splitlines() for part in line.split("&&")
            if part.strip() and not part.strip().startswith("#")]


def bench_argvs(script: str) -> list[tuple[str, ...]]:
    """The arguments of every ``python -m bench`` (or ``"$PYTHON" -m bench``) in ``script``."""
    found = [BENCH.search(line) for line in _lines(script)]
    return [tuple(shlex.split(m.group(1))) for m in found if m]


def steps() -> list[dict[str, Any]]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert len(jobs) == 1, f"{WORKFLOW}: expected one job, found {sorted(jobs)}"
    return next(iter(jobs.values()))["steps"]


def workflow_commands() -> list[Command]:
    """Every bench command of the workflow, in the order the job runs them."""
    return [Command(s.get("name", "?"), argv) for s in steps()
            for argv in bench_argvs(s.get("run", ""))]


def gpu_check_commands() -> list[tuple[str, ...]]:
    return bench_argvs(GPU_CHECK.read_text())


def anchored(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` with its ``--config`` file relative to the checkout, where the job runs."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word == "--config" and not Path(out[i + 1]).is_absolute():
            out[i + 1] = str(REPO / out[i + 1])
    return tuple(out)


def parse(argv: tuple[str, ...]) -> Any:
    """``argv`` (``--config`` anchored) through the real command-line parser; a failed test,
    not an exit, on error."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(list(anchored(argv)))
    except SystemExit:
        pytest.fail(f"python -m bench {shlex.join(argv)} does not parse: {err.getvalue()}")


def config_file(argv: tuple[str, ...]) -> Path | None:
    path = getattr(parse(argv), "config", None)
    return Path(path) if path else None


def _option_overrides(flag: str, opts: dict[str, Any], names: list[str], registry: Any,
                      budget: dict[str, Any]) -> list[str]:
    """``flag key=value`` for every budget option a plugin of ``names`` takes, and for every
    option the command scopes to one plugin (``lgd.epochs``) that is a budget option."""
    keys: dict[str, Any] = {}
    for name in names:
        keys.update(budget_options(registry.get(split_spec(name)[0]).builder, budget))
    keys.update({k: budget[k.rpartition(".")[2]] for k in opts
                 if "." in k and k.rpartition(".")[2] in budget})
    return [a for k, v in keys.items() for a in (flag, f"{k}={str(v).lower()}")]


def smoke_argv(argv: tuple[str, ...]) -> list[str]:
    """``argv`` with the smoke size appended: the options of :data:`SMOKE` its subcommand takes,
    the contract kit's training and attack budgets for the plugins it names (one epoch, two
    steps...), the narrowest U-net, and one epoch on 8 images for every classifier (timm ones
    untrained)."""
    argv = anchored(argv)
    args = parse(argv)
    given = vars(args)
    if "device" not in given:  # leaderboard: nothing is computed
        return list(argv)
    extra = [a for dest, value in SMOKE.items() if dest in given
             for a in ("--" + dest.replace("_", "-"), value)]
    cfg = run_config(args)
    extra += _option_overrides("--defense-opt", cfg.defense_opts, list(cfg.defenses), DEFENSES,
                               DEFENSE_BUDGET)
    extra += _option_overrides("--attack-opt", cfg.attack_opts, list(cfg.attacks), ATTACKS,
                               ATTACK_BUDGET) if "attack_opt" in given else []
    for name in cfg.defenses:
        narrow = budget_options(DEFENSES.get(split_spec(name)[0]).builder, UNET_WIDTHS)
        if len(narrow) == len(UNET_WIDTHS):
            extra += [a for k, v in narrow.items() for a in ("--defense-opt", f"{name}.{k}={v}")]
    models = [*cfg.models, *[m for d in cfg.datasets for m in DATASETS.get(d).builder.models]]
    untrained = {f"{m}.pretrained": False for m in dict.fromkeys(models)
                 if budget_options(MODELS.get(m).builder, {"pretrained": False})}
    extra += [a for k, v in {**MODEL_BUDGET, **untrained}.items()
              for a in ("--model-opt", f"{k}={str(v).lower()}")]
    return [*argv, *extra]


# -- the workflow's shape --------------------------------------------------------------------

def test_the_gpu_check_runs_first_and_gates_every_later_step() -> None:
    runs = [s.get("run", "") for s in steps()]
    first = next(i for i, run in enumerate(runs) if GPU_CHECK_STEP in run)
    assert all(not bench_argvs(run) for run in runs[:first]), "bench runs before the GPU check"
    gate = steps()[first]
    assert gate.get("id") == "gpu" and "if" not in gate
    for step in steps()[first + 1:]:
        cond = str(step.get("if", ""))
        assert GPU_CONDITION in cond or cond == "always()", (
            f"step {step.get('name') or step.get('uses')!r} runs whether or not the GPU check "
            f"passed: give it if: ${{{{ !cancelled() && {GPU_CONDITION} }}}}")
    assert GPU_CHECK.is_file() and os.access(GPU_CHECK, os.X_OK)


def test_every_config_file_is_run_and_every_named_file_exists() -> None:
    named = [config_file(c.argv) for c in workflow_commands()]
    named += [config_file(a) for a in gpu_check_commands()]
    named_files = {p.resolve() for p in named if p is not None}
    for path in named_files:
        assert path.is_file(), f"--config {path.relative_to(REPO)} does not exist"
    on_disk = {p.resolve() for p in NIGHTLY.glob("*.json")}
    assert on_disk - named_files == set(), (
        f"config files nothing runs: {sorted(p.name for p in on_disk - named_files)}; name them "
        f"in {WORKFLOW.relative_to(REPO)} (python -m bench run --config FILE) or delete them")
    run_configs = [c for c in workflow_commands() if c.kind == "run"]
    assert run_configs and all(config_file(c.argv) for c in run_configs), (
        "every grid of the nightly is a config file: python -m bench run --config nightly/F.json")


def test_the_workflows_commands_parse_and_name_registered_plugins() -> None:
    for c in workflow_commands():
        args = parse(c.argv)
        if "device" in vars(args):
            cfg = run_config(args)  # the config file's fields, and every value, are checked
            for names, registry in [(cfg.defenses, DEFENSES), (cfg.attacks, ATTACKS),
                                    (cfg.datasets, DATASETS), (cfg.models, MODELS)]:
                for name in names:
                    registry.get(split_spec(name)[0])  # raises, suggesting names, when unknown
    for argv in gpu_check_commands():
        parse(argv)
    assert any(c.argv[:2] == ("plot", "amplification") and "imagenet" in c.argv
               for c in workflow_commands()), "HGD Figure 5 at the paper's scale is gone"


def test_every_grid_names_plugins_and_options_that_exist(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every grid's names, options and data checked as ``run`` checks them before anything
    trains (fast; the smoke runs below run them): a renamed option fails here too."""
    from bench.session import Session

    write_data(tmp_path)
    smoke_environment(monkeypatch, tmp_path)
    grids = [c.argv for c in workflow_commands()] + gpu_check_commands()
    for argv in grids:
        if parse(argv).command == "run":
            cfg = run_config(parse(tuple(smoke_argv(argv))))
            for dataset in cfg.datasets:
                for model in cfg.models or [None]:
                    Session.for_config(cfg, dataset, model).validate(cfg.defenses, cfg.attacks,
                                                                     cfg.eps)


def test_the_steps_fit_together() -> None:
    """One store for every run, the audit and the leaderboard; the plots go where the HTML page
    embeds them and are made before it; the leaderboard comes last, in every format, into the
    folder the artifact uploads."""
    commands = workflow_commands()
    kinds = [c.kind for c in commands]
    stores = set()
    for c in commands:
        args = parse(c.argv)
        if c.kind in ("run", "audit", "leaderboard"):
            stores.add(args.results if c.kind == "leaderboard" else run_config(args).results)
    assert len(stores) == 1, f"the runs and the leaderboard use different stores: {stores}"
    boards = [parse(c.argv) for c in commands if c.kind == "leaderboard"]
    assert sorted(b.format for b in boards) == ["csv", "html", "json", "md"]
    (out,) = {b.out for b in boards}
    last_compute = max(i for i, k in enumerate(kinds) if k != "leaderboard")
    assert kinds[last_compute + 1:] == ["leaderboard"] * len(boards)
    plots = [parse(c.argv) for c in commands if c.kind == "plot"]
    assert plots and {p.out for p in plots} == {f"{out}/plots"}
    upload = next(s for s in steps() if str(s.get("uses", "")).startswith("actions/upload"))
    assert upload["with"]["path"].rstrip("/") == out and upload["if"] == "always()"


def test_the_one_line_commands_reuse_the_grids_weights() -> None:
    """The audit and plots on a grid's dataset train their defenses like the grid does (same
    defense options and training images), so that they reuse its cached weights."""
    grids: dict[str, set[Any]] = {}
    for c in workflow_commands():
        if c.kind == "run":
            cfg = run_config(parse(c.argv))
            for d in cfg.datasets:
                grids.setdefault(d, set()).add((tuple(sorted(cfg.defense_opts.items())),
                                                cfg.fit_images))
    for c in workflow_commands():
        if c.kind in ("audit", "plot"):
            cfg = run_config(parse(c.argv))
            for d in cfg.datasets:
                if d in grids:
                    ours = (tuple(sorted(cfg.defense_opts.items())), cfg.fit_images)
                    assert ours in grids[d], f"{c}: {ours} trains other weights than {grids[d]}"


# -- the GPU check -----------------------------------------------------------------------------

def test_the_gpu_check_script_is_valid_bash_and_names_its_stages() -> None:
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)
    text = GPU_CHECK.read_text()
    for needle in ("pytest -m gpu", "--bench-device cuda", "nightly/compare_stores.py",
                   "timeout"):
        assert needle in text, f"{GPU_CHECK.name} no longer runs {needle!r}"
    budgets = re.findall(r"GPU_CHECK_\w+_S:-(\d+)", text)
    repeat = int(re.search(r"GPU_CHECK_REPEAT_S:-(\d+)", text).group(1))
    assert sum(map(int, budgets)) + repeat <= 8 * 60, "the GPU check's budgets exceed 8 minutes"


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_the_gpu_check_without_a_gpu_fails_in_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)}
    out = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no CUDA device is visible" in out.stderr


def _flip_first_robust_flag(db: Path) -> str:
    con = sqlite3.connect(db)
    h, blob = con.execute("SELECT config_hash, robust_correct FROM results "
                          "ORDER BY config_hash LIMIT 1").fetchone()
    con.execute("UPDATE results SET robust_correct = ? WHERE config_hash = ?",
                (bytes([1 - blob[0]]) + blob[1:], h))
    con.commit()
    con.close()
    return h


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(COMPARE), str(a), str(b)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
def test_the_repeat_stage_agrees_with_itself_and_catches_one_flipped_image(
        tmp_path: Path) -> None:
    """The GPU check's repeat stage on CPU: the repeated grid, twice in fresh processes from
    fresh caches into two stores, agrees image for image; one flipped flag is named."""
    (argv,) = {a for a in gpu_check_commands() if parse(a).command == "run"}
    stores = []
    for i in (1, 2):
        db = tmp_path / f"run-{i}.sqlite"
        cmd = [*smoke_argv(argv), "--n", "8", "--results", str(db)]
        env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / f"cache-{i}"),
               "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "bench", *cmd], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        stores.append(db)
    same = _compare(*stores)
    assert same.returncode == 0 and "cells agree image for image" in same.stdout, same.stdout
    h = _flip_first_robust_flag(stores[1])
    differ = _compare(*stores)
    assert differ.returncode == 1, differ.stdout
    assert f"[{h}]: robust_correct: 1 of 8 images differ (indices 0)" in differ.stdout


def test_compare_stores_refuses_a_missing_or_empty_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE results (config_hash TEXT)").connection.close()
    for a, why in [(tmp_path / "none.sqlite", "no such store"), (empty, "not a readable")]:
        out = _compare(a, a)
        assert out.returncode == 2 and why in out.stderr, out.stderr


# -- every command, at the smoke size ------------------------------------------------------------

def write_data(root: Path) -> None:
    """MNIST, CIFAR-10 and ImageNet files in their on-disk formats, a few images each."""
    write_mnist(root, "train", 32)
    write_mnist(root, "test", 4)
    write_cifar10(root, n_train=8, n_test=4)
    write_imagenet(root)
    shutil.copytree(root / "imagenet" / "val", root / "imagenet" / "train")


def smoke_environment(mp: pytest.MonkeyPatch, data: Path) -> None:
    """The job's environment at the smoke size: the data written at ``data``, no Ray, never the
    network (timm models are built untrained), and the written CIFAR-10 files accepted (they
    are not the published ones: only torchvision's md5 comparison is skipped)."""
    mp.setenv("BENCH_DATA_ROOT", str(data))
    mp.delenv("BENCH_EXECUTOR", raising=False)
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """``python -m bench argv`` in this process: its exit status and stderr. The logging handler
    :func:`bench.cli.main` installs is removed again, so other tests capture their own."""
    logger = logging.getLogger("bench")
    handlers = list(logger.handlers)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    finally:
        logger.handlers[:] = handlers
    return code, err.getvalue()


@dataclass
class Pipeline:
    """What running the workflow's commands at the smoke size left behind."""

    out: Path
    store: Path
    failures: dict[str, str]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Every bench command of the workflow at the smoke size, in order, as the job runs them:
    in one working folder (the checkout's place), with one data root, cache and store."""
    work = tmp_path_factory.mktemp("nightly")
    write_data(work / "data")
    failures: dict[str, str] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only waits on a busy machine
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        smoke_environment(mp, work / "data")
        mp.setenv("BENCH_CACHE_DIR", str(work / "cache"))
        mp.setenv("BENCH_RESULTS", str(work / "results" / "bench.sqlite"))
        try:
            for c in workflow_commands():
                try:
                    code, err = run_in_process(smoke_argv(c.argv))
                except Exception:  # a crash, not a one-line error: the next commands still run
                    code, err = 1, traceback.format_exc()
                if code != 0:
                    lines = [line for line in err.splitlines() if line.startswith("error")]
                    failures[str(c)] = "\n".join(lines[-1:] or err.splitlines()[-12:]
                                                 or ["(no output)"])
        finally:
            torch.set_num_threads(threads)
        yield Pipeline(work / "results", work / "results" / "bench.sqlite", failures)


@pytest.mark.slow
@pytest.mark.parametrize("command", workflow_commands(), ids=str)
def test_every_workflow_command_runs_at_the_smoke_size(pipeline: Pipeline,
                                                       command: Command) -> None:
    if str(command) in pipeline.failures:
        pytest.fail(f"{command}\n{pipeline.failures[str(command)]}", pytrace=False)


@pytest.mark.slow
def test_every_config_files_grid_is_in_the_store(pipeline: Pipeline) -> None:
    con = sqlite3.connect(pipeline.store)
    stored = set(con.execute("SELECT dataset, defense, attack FROM results").fetchall())
    for c in workflow_commands():
        if c.kind == "run":
            cfg = RunConfig.resolve({}, config_file(c.argv))
            want = {(d, f, a) for d in cfg.datasets for f in cfg.defenses for a in cfg.attacks}
            assert want <= stored, f"{c}: cells missing from the store: {sorted(want - stored)}"


@pytest.mark.slow
def test_the_published_folder_holds_the_leaderboards_and_the_plots(pipeline: Pipeline) -> None:
    for fmt in ("md", "csv", "json", "html"):
        assert (pipeline.out / f"leaderboard.{fmt}").is_file()
    table = (pipeline.out / "leaderboard.csv").read_text()
    for c in workflow_commands():
        for dataset in run_config(parse(c.argv)).datasets if c.kind == "run" else ():
            assert f"\n{dataset}," in table, f"the leaderboard has no {dataset} rows"
    plots = sorted((pipeline.out / "plots").glob("*.png"))
    assert any("imagenet" in p.name for p in plots) and any("mnist" in p.name for p in plots)
    html = (pipeline.out / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64,") >= len(plots)
