"""The undefended baseline: the identity preprocessor.

Every leaderboard shows it beside the defenses so that each defended number has its reference.
Example: ``python -m bench run --defense none --attack pgd100``.
"""

from __future__ import annotations

import torch

from bench.defense import Defense
from bench.registry import register_defense


@register_defense("none")
class NoDefense(Defense):
    """No defense: images go to the classifier unchanged (the baseline)."""

    identity = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` (N x C x H x W in [0,1]) unchanged."""
        return x
