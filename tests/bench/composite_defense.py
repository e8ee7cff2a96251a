"""A small composite defense for the executor tests (not a registered plugin: tests add it for a
``with`` block with :func:`registration`): the mean of the image and what a trained part (``dae``)
makes of it. A grid with it and ``dae`` has two groups that need the same fitted part, which the
Ray executor fits once, before both."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch

from bench.defense import Defense, Parts
from bench.registry import DEFENSES
from bench.testing import registered

NAME = "test-halfway"
PART = "dae"


class HalfwayDefense(Defense):
    """(x + part(x)) / 2 for a trained part (a composite preprocessor; test only).

    Example: python -m bench run --defense test-halfway --attack fgsm (with it registered)
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes)
        self.part: Defense | None = None

    def parts(self, models: Sequence[str]) -> Parts:
        return Parts(defenses=(PART,))

    def compose(self, defenses: Sequence[Defense], models: Sequence[torch.nn.Module]) -> None:
        (self.part,) = defenses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.part is not None, "composed before use"
        return (x + self.part(x)) / 2


def registration() -> AbstractContextManager[str]:
    """The defense registered under ``NAME`` for a ``with`` block (the registry restored after)."""
    return registered(DEFENSES, NAME, HalfwayDefense, description="test composite")
