"""The plugin contract kit: the checks every registered defense and attack must pass, installed
with the harness so that a plugin's author runs them on an installed plugin, with no checkout of
this repository::

    python -m bench check blur3 my-fgsm          # one line per check: PASS, FAIL: why, SKIP: why
    python -m pytest --pyargs bench.testing      # every registered plugin, as pytest tests
    BENCH_CHECK=blur3,my-fgsm python -m pytest --pyargs bench.testing
    BENCH_PLUGINS=my_blur.py BENCH_CHECK=my-blur python -m pytest --pyargs bench.testing

The checks (:data:`DEFENSE_CHECKS` in :mod:`.defense_contract`, :data:`ATTACK_CHECKS` in
:mod:`.attack_contract`) run on tiny data and models (:mod:`.tiny`), with training and attack
budgets shrunk through generic constructor options (``epochs``, ``steps``...): seconds per plugin
on a CPU. This repository's own contract tests run the same checks over the registries
(``tests/defenses/test_contract.py``, ``tests/attacks/test_contract.py``).
:func:`registered` adds a throwaway plugin to a registry for one ``with`` block, :func:`restored`
removes whatever a block registered (a plugin module imported by a test).
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterator, Sequence

from bench.errors import UnknownPluginError
from bench.registry import ATTACKS, DEFENSES
from bench.testing.attack_contract import ATTACK_CHECKS, AttackBench
from bench.testing.core import (
    FAIL,
    PASS,
    SKIP,
    Check,
    CheckFailed,
    CheckSkipped,
    Outcome,
    outcome,
    registered,
    require,
    restored,
)
from bench.testing.defense_contract import DEFENSE_CHECKS, DefenseBench

__all__ = ["ATTACK_CHECKS", "DEFENSE_CHECKS", "ENV_SELECT", "FAIL", "PASS", "SKIP",
           "AttackBench", "Check", "CheckFailed", "CheckSkipped", "DefenseBench", "Outcome",
           "check_plugins", "registered", "require", "restored", "selected"]

#: Names of the plugins ``python -m pytest --pyargs bench.testing`` checks (comma-separated).
ENV_SELECT = "BENCH_CHECK"
KINDS = ("defense", "attack")


def selected(names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The plugins to check, by kind: ``names`` (default: ``$BENCH_CHECK``, comma-separated;
    unset, every registered defense and attack). A name registered as both a defense and an
    attack is checked as both; one registered as neither is an UnknownPluginError suggesting
    the closest names. The plugin files of ``$BENCH_PLUGINS`` are imported first."""
    from bench.plugin_files import env_paths, load_plugins

    load_plugins(env_paths())
    if names is None:
        env = os.environ.get(ENV_SELECT, "")
        names = [n.strip() for n in env.split(",") if n.strip()] or None
    if not names:
        return {"defense": DEFENSES.names(), "attack": ATTACKS.names()}
    out: dict[str, list[str]] = {"defense": [], "attack": []}
    for name in names:
        hits = [kind for kind, reg in zip(KINDS, (DEFENSES, ATTACKS), strict=True) if name in reg]
        if not hits:
            close = difflib.get_close_matches(name.lower(), DEFENSES.names() + ATTACKS.names(),
                                              n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownPluginError(f"Unknown defense or attack '{name}'.{hint} See: python -m "
                                     f"bench list defenses (or attacks)")
        for kind in hits:
            out[kind].append(name)
    return out


def check_plugins(names: Sequence[str] | None = None,
                  cache_root: str | None = None) -> Iterator[Outcome]:
    """Every check on every plugin of :func:`selected` (``names``), defenses first, one
    :class:`Outcome` at a time. Fits go to ``cache_root`` (default: a temporary folder removed
    afterwards; the user's cache is never touched)."""
    chosen = selected(names)
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        defenses = DefenseBench(cache_root or tmp)
        for name in chosen["defense"]:
            for check in DEFENSE_CHECKS:
                yield outcome(check, defenses, "defense", name)
        attacks = AttackBench()
        for name in chosen["attack"]:
            for check in ATTACK_CHECKS:
                yield outcome(check, attacks, "attack", name)
