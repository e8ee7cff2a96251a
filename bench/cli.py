"""Command line: ``python -m bench {run,train,audit,list,check,leaderboard,plot}``.

Every user error is reported as one line (``error: ...``) with the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from bench.arguments import (
    analysis_options,
    common_options,
    executor_options,
    from_config_file,
    grid_options,
    plugins_option,
    positive_int,
    run_config,
)
from bench.check import add_parser as add_check_parser
from bench.config import (
    ENV_CACHE_DIR,
    cache_dir,
    check_output_path,
    parse_eps,
    results_path,
    split_list,
)
from bench.data import get_dataset
from bench.errors import BenchError, ConfigError
from bench.plugin_files import env_paths, load_plugins, origin
from bench.registry import REGISTRIES
from bench.runtime import set_quiet
from bench.session import Session
from bench.store import open_store

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench run --defense lgd --attack pgd100
  python -m bench run --dataset mnist --defense none,lgd --attack fgsm,pgd100 --eps 0.2 --n 1000
  python -m bench run --dataset cifar10 --attack pgd10 --eps 8/255 --threat whitebox
  python -m bench list attacks 'pgd*'
  python -m bench check blur3 my-fgsm
  python -m bench train --dataset mnist --model cnn
  python -m bench leaderboard --format html --out results
  python -m bench plot amplification --dataset mnist --defense dunet,lgd --attack ifgsm4 --eps 0.2
  python -m bench plot residual --dataset mnist --defense dunet,lgd --attack ifgsm4 --eps 0.2
  python -m bench plot sweep --defense bitdepth --param bitdepth.bits --values 1,2,4,8 --attack fgsm
"""
PLOT_EPILOG = """examples:
  python -m bench plot amplification --dataset mnist --defense dunet,lgd --attack ifgsm4 --eps 0.2
  python -m bench plot residual --dataset mnist --defense dunet,lgd --attack ifgsm4 --eps 0.2
  python -m bench plot sweep --defense bitdepth --param bitdepth.bits --values 1,2,4,8 --attack fgsm
  python -m bench plot sweep --defense median --param eps --values 0.05,0.1,0.2,0.3 --attack pgd10
  python -m bench plot sweep --defense jpeg --param pgd10.steps --values 1,2,5,10,20 --attack pgd10
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``error: ...``), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Benchmark defenses against adversarial examples.")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a grid and print its leaderboard", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    common_options(run)
    grid_options(run)
    run.add_argument("--dry-run", action="store_true",
                     help="check everything and print the cells the run would compute (and "
                          "which are stored already); train, attack and write nothing")
    run.set_defaults(func=cmd_run)

    train = sub.add_parser("train", help="train (and cache) a classifier and defenses")
    common_options(train)
    train.add_argument("--defense", default="", help="comma list of defenses to fit too")
    train.add_argument("--retrain", action="store_true", help="ignore cached weights")
    train.set_defaults(func=cmd_train)

    aud = sub.add_parser("audit", help="run the gradient-masking checks and print the checklist")
    common_options(aud)
    aud.add_argument("--defense", required=True, help="comma list of defenses to audit")
    aud.add_argument("--eps", default=None, help="one eps (default: the dataset's)")
    aud.add_argument("--n", type=positive_int, default=None, help="test images (default 200)")
    aud.add_argument("--steps", type=positive_int, default=100,
                     help="iterations of the iterative attack (doubled by the convergence "
                          "check; default 100)")
    aud.add_argument("--n-queries", type=positive_int, default=1000,
                     help="queries of the score-based attack (default 1000)")
    aud.add_argument("--planted-n", type=int, default=20,
                     help="images of the planted-example test of the suite (default 20; 0 "
                          "skips it)")
    aud.add_argument("--planted-steps", type=positive_int, default=20,
                     help="iterations of the suite's gradient attacks in it (default 20)")
    aud.add_argument("--eot", type=positive_int, default=None,
                     help="EOT draws through a randomized defense (default 20)")
    aud.add_argument("--eval-draws", type=positive_int, default=None,
                     help="forward passes per image of a randomized defense (default 10)")
    aud.add_argument("--source-model", default=None, help="the transfer attack's source model")
    aud.add_argument("--attack-opt", action="append", metavar="[NAME.]KEY=VALUE")
    aud.add_argument("--results", default=None, help="SQLite store (default results/bench.sqlite)")
    executor_options(aud)
    aud.set_defaults(func=cmd_audit)

    add_check_parser(sub)  # python -m bench check NAME...: bench/check.py

    lst = sub.add_parser("list", help="list registered plugins")
    lst.add_argument("what", choices=sorted(REGISTRIES))
    lst.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'pgd*'")
    plugins_option(lst)
    lst.set_defaults(func=cmd_list)

    lb = sub.add_parser("leaderboard", help="print or export the leaderboard")
    lb.add_argument("--results", default=None)
    lb.add_argument("--format", default="md",
                    choices=["md", "csv", "json", "html", "robustbench"],
                    help="md (default), csv, json, html (the page) or robustbench (one "
                         "RobustBench model-info JSON per row and eps)")
    lb.add_argument("--out", default=None, help="write leaderboard.<fmt> into this folder "
                    "(robustbench: OUT/model_info/<dataset>/<Linf|L2>/*.json)")
    lb.add_argument("--plots", action="append", metavar="FOLDER",
                    help="html: embed the PNG plots of this folder (repeatable; default: "
                         "OUT/plots, the plots folder beside the store and results/plots, "
                         "where `bench plot` writes)")
    lb.set_defaults(func=cmd_leaderboard)

    plot = sub.add_parser("plot", help="analysis plots (PNG, SVG and CSV; paths on stdout)",
                          epilog=PLOT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = plot.add_subparsers(dest="plot", required=True)
    amp = psub.add_parser("amplification", help="layer-wise error amplification (HGD Fig. 5)")
    analysis_options(amp)
    amp.add_argument("--matched-noise", action="store_true",
                     help="also plot, per defense, Gaussian noise with the norm of its residual "
                          "x^ - x (dashed): amplification of the residual itself")
    amp.set_defaults(func=cmd_plot_amplification)
    res = psub.add_parser("residual", help="dx* vs predicted dx^ histogram, slope k (HGD Fig. 7)")
    analysis_options(res)
    res.set_defaults(func=cmd_plot_residual)
    swp = psub.add_parser("sweep", help="accuracy vs eps, a defense option or an attack option",
                          epilog=PLOT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_options(swp)
    grid_options(swp)
    swp.add_argument("--param", required=True,
                     help="eps, DEFENSE.OPTION (e.g. bitdepth.bits) or ATTACK.OPTION (pgd10.steps)")
    swp.add_argument("--values", required=True, help="comma list, e.g. 1,2,4,8 or 2/255,8/255")
    swp.add_argument("--out", default=None, help="folder (default results/plots)")
    swp.set_defaults(func=cmd_plot_sweep)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from bench.executors import run_grid
    from bench.report import render
    from bench.session import baseline_name

    cfg = run_config(args)
    if args.dry_run:
        from bench.dry_run import dry_run

        print(dry_run(cfg), end="")
        return 0
    store = open_store(results_path(cfg.results))
    hashes = run_grid(cfg, store)
    print(render(store.frame(hashes), "md", baseline=baseline_name()))
    log.info("results stored in %s", store.path)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from bench.audit import checklist, run_audit
    from bench.planted import PlantedSpec

    cfg = run_config(args, n=200)
    eps = parse_eps(args.eps) if args.eps is not None else None
    store = open_store(results_path(cfg.results))
    found, na = run_audit(cfg, store, eps, steps=args.steps, n_queries=args.n_queries,
                          planted=PlantedSpec(n=args.planted_n, steps=args.planted_steps))
    info = get_dataset(cfg.datasets[0], root=cfg.data_root).info
    print(checklist(found, info.default_eps if eps is None else eps, na), end="")
    log.info("cells and checks stored in %s", store.path)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = run_config(args, defenses=())
    sessions = [Session.for_config(cfg, ds, model)
                for ds in cfg.datasets for model in cfg.models or [None]]
    for s in sessions:  # every option, name and file is checked before anything trains
        s.validate(cfg.defenses)
    for s in sessions:
        print(f"{s.info.name}/{s.model_name}: test accuracy "
              f"{s.target.meta.get('test_acc', 'n/a')}")
        for name in cfg.defenses:
            s.defense(name, retrain=args.retrain)
            print(f"{s.info.name}/{s.model_name}/{name}: {s.fit_meta(name)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    reg = REGISTRIES[args.what]
    rows = [(e.name, e.kind, origin(e.module),
             e.description + "".join(f" [{k}={v}]" for k, v in e.overrides.items()))
            for e in reg.entries(args.pattern)]
    if not rows:
        raise ConfigError(f"No {args.what} match {args.pattern!r}. See: python -m bench list "
                          f"{args.what}")
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for name, kind, where, desc in rows:
        print(f"{name:<{width[0]}}  {kind:<{width[1]}}  {where:<{width[2]}}  {desc}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.report import render
    from bench.session import baseline_name

    store = open_store(results_path(args.results), must_exist=True)
    out = check_output_path(args.out, "--out", folder=True) if args.out else None
    plots = [Path(p) for p in args.plots] if args.plots else [
        *([Path(out) / "plots"] if out else []), store.path.parent / "plots",
        results_path().parent / "plots"]  # where `bench plot` writes by default
    print(render(store.frame(), args.format, out_dir=out, baseline=baseline_name(),
                 plot_dirs=plots))
    return 0


def _plot_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else results_path().parent / "plots"
    return check_output_path(out, "--out", folder=True)


def _sessions(args: argparse.Namespace, plot: str) -> Iterator[Session]:
    """One session per --dataset for an analysis plot (500 test images unless --n), each checked
    before anything runs."""
    from bench.analysis.common import preprocessors

    preprocessors(split_list(args.defense), plot)
    cfg = run_config(args, n=500, defenses=split_list(args.defense),
                      attacks=split_list(args.attack))
    sessions = [Session.for_config(cfg, ds, cfg.models[0] if cfg.models else None)
                for ds in cfg.datasets]
    for s in sessions:
        s.validate(cfg.defenses, cfg.attacks)
    yield from sessions


def cmd_plot_amplification(args: argparse.Namespace) -> int:
    from bench.analysis.amplification import plot_figure5

    out = _plot_dir(args)
    for s in _sessions(args, "amplification"):
        for path in plot_figure5(s, args.attack, args.eps, split_list(args.defense), out,
                                 args.matched_noise):
            print(path)
    return 0


def cmd_plot_residual(args: argparse.Namespace) -> int:
    from bench.analysis.residual import plot_figure7

    out = _plot_dir(args)
    for s in _sessions(args, "residual"):
        for path in plot_figure7(s, args.attack, args.eps, split_list(args.defense), out):
            print(path)
    return 0


def cmd_plot_sweep(args: argparse.Namespace) -> int:
    from bench.analysis import sweep

    cfg = run_config(args)
    param = sweep.parse_param(args.param, cfg)
    values = sweep.parse_values(param, args.values)
    out = _plot_dir(args)
    store = open_store(results_path(cfg.results))
    table = sweep.run_sweep(cfg, param, values, store)
    for path in sweep.plot_sweep(table, param, out):
        print(path)
    log.info("cells stored in %s", store.path)
    return 0


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the
    first call: ``main`` called again after its caller replaced stderr (a test's capture, a
    notebook) must not write to a closed file."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line usage error (see _Parser)
        return int(exc.code or 0)
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("bench: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    set_quiet(args.quiet)
    try:
        load_plugins([*env_paths(), *(getattr(args, "plugins", None) or [])])
        if args.command in ("run", "train", "plot"):  # they write trained weights and sets
            check_output_path(cache_dir(), f"The cache folder (${ENV_CACHE_DIR})", folder=True)
        return int(args.func(args))
    except BenchError as exc:
        print(f"error: {from_config_file(args, str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are stored; rerun the same command to resume",
              file=sys.stderr)
        return 130
