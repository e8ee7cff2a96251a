"""Every check of the contract kit on every registered defense and attack, as pytest tests::

    python -m pytest --pyargs bench.testing                              # all plugins
    BENCH_CHECK=blur3,my-fgsm python -m pytest --pyargs bench.testing    # these only

A test is named after the plugin and the check (``test_defense_contract[blur3-forward]``), so
``-k`` selects either. A check that does not apply to a plugin is skipped with the reason.
"""

from __future__ import annotations

import pytest

from bench.testing import (
    ATTACK_CHECKS,
    DEFENSE_CHECKS,
    AttackBench,
    Check,
    CheckSkipped,
    DefenseBench,
    selected,
)
from bench.testing.core import one_thread

_CHOSEN = selected()


def _cases(kind: str, checks: tuple[Check, ...]) -> list[object]:
    return [pytest.param(check, name, id=f"{name}-{check.name}")
            for name in _CHOSEN[kind] for check in checks]


def _run(check: Check, bench: object, name: str) -> None:
    __tracebackhide__ = True
    try:
        with one_thread():
            check.run(bench, name)
    except CheckSkipped as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def defense_bench(tmp_path_factory: pytest.TempPathFactory) -> DefenseBench:
    """The defenses under test, fitted on first use into a fresh cache."""
    return DefenseBench(tmp_path_factory.mktemp("bench-check"))


@pytest.fixture(scope="module")
def attack_bench() -> AttackBench:
    """The attacks' tiny models and data."""
    return AttackBench()


@pytest.mark.parametrize(("check", "name"), _cases("defense", DEFENSE_CHECKS))
def test_defense_contract(check: Check, name: str, defense_bench: DefenseBench) -> None:
    _run(check, defense_bench, name)


@pytest.mark.parametrize(("check", "name"), _cases("attack", ATTACK_CHECKS))
def test_attack_contract(check: Check, name: str, attack_bench: AttackBench) -> None:
    _run(check, attack_bench, name)
