"""The attack contract over every registered attack: the contract kit's checks
(:mod:`bench.testing`, also ``python -m bench check``), collected here, so that a new attack is
covered by registering it. Steps and query budgets are shrunk generically (no attack is named);
every attack that does not declare itself a ``baseline`` must fool a trained model (an attack
returning ``x`` fails). What :meth:`bench.attack.Attack.__call__` enforces for every attack (the
validation of each batch, eval mode, frozen weights, the caller's random stream) is tested once,
on throwaway attacks, in tests/bench/test_attack.py.
"""

from __future__ import annotations

from bench.testing.test_plugins import test_attack_contract  # noqa: F401 - collected here
