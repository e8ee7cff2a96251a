"""A small randomized defense for the reproducibility tests (not a registered plugin: tests add it
for a ``with`` block with :func:`registration`, in process or in a subprocess through
:func:`main`).

Gaussian noise of standard deviation ``sigma`` added to the image and clipped to [0,1], drawn
from torch's global RNG as the defense contract asks: whatever seeds that RNG decides the result,
so a cell's numbers are reproducible only if the harness seeds every evaluation from the cell.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch

from bench.defense import Defense
from bench.registry import DEFENSES
from bench.testing import registered

NAME = "test-noisy"


class NoisyDefense(Defense):
    """Adds N(0, sigma^2) noise, clipped (a randomized preprocessor; test only).

    Example: python -m bench run --defense test-noisy --attack fgsm (with it registered)
    """

    randomized = True

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 sigma: float = 0.35) -> None:
        super().__init__(input_shape, num_classes)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0)


def registration() -> AbstractContextManager[str]:
    """The defense registered under ``NAME`` for a ``with`` block (the registry restored after)."""
    return registered(DEFENSES, NAME, NoisyDefense, description="test noise")


def main(argv: list[str]) -> int:
    """``python -m tests.bench.randomized_defense ARGS``: the CLI with the defense registered."""
    from bench.cli import main as cli

    with registration():
        return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
