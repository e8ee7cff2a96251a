"""Where every seed of the harness comes from: the one rule for a batch's seed and the one
derivation of a seed from named parts (a cell's hash, a member's label, a batch index).

A per-image result must not depend on what ran before it in the process, on the grid's order or
on the executor, so no code draws from a seed it made up itself: it asks here.
"""

from __future__ import annotations

from typing import Any

from bench.cache import stable_hash


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (e.g. a cell's hash and a batch index): the same parts give
    the same seed on every machine, run and grid order."""
    return int(stable_hash([str(p) for p in parts], length=15), 16)


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a set crafted over a whole slice (or a training set) from
    run seed ``seed``: a set depends on the seed and the batch size, not on what ran before."""
    return seed * 100003 + index
