"""``python -m bench check [NAME ...]``: the contract kit (:mod:`bench.testing`) on installed
plugins, one line per check on stdout (``PASS``, ``FAIL: why`` or ``SKIP: why``), then a count.

The exit status is 1 when any check fails, else 0. Without names every registered defense and
attack is checked. Fits go to a temporary folder, never to the user's cache. Only the parser is
defined at import time: the kit is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from bench.arguments import plugins_option

DESCRIPTION = """Run the contract checks on installed defenses and attacks: one line per check
(PASS, FAIL: why, or SKIP: why), then a count; exit status 1 when a check fails."""
EPILOG = """examples:
  python -m bench check blur3 my-fgsm
  python -m bench check --list
  BENCH_CHECK=blur3,my-fgsm python -m pytest --pyargs bench.testing   (the same, as pytest tests)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``check`` subcommand and its options."""
    p = sub.add_parser("check", help="run the plugin contract checks on defenses and attacks",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="registered defenses or attacks (default: every one)")
    p.add_argument("--list", action="store_true", help="list the checks and what each verifies")
    plugins_option(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the checks (``--list``) or run them on ``args.names``; 1 on any failure."""
    from bench.testing import ATTACK_CHECKS, DEFENSE_CHECKS

    out = out or sys.stdout
    if args.list:
        for kind, checks in (("defense", DEFENSE_CHECKS), ("attack", ATTACK_CHECKS)):
            for check in checks:
                print(f"{kind:8s} {check.name:20s} {check.summary}", file=out)
        return 0
    return run(args.names or None, out)


def run(names: Sequence[str] | None, out: TextIO) -> int:
    """Every check on the plugins ``names`` (None: all), printed as it finishes; 1 on any
    failure, else 0."""
    from bench.testing import FAIL, PASS, SKIP, check_plugins
    from bench.testing.core import one_thread

    counts = {PASS: 0, FAIL: 0, SKIP: 0}
    with one_thread():
        for result in check_plugins(names):
            counts[result.status] += 1
            print(result.line(), file=out, flush=True)
    print(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped", file=out)
    return 1 if counts[FAIL] else 0
