"""Square Attack (Andriushchenko et al.): score-based, gradient-free random search, L-inf.

Paper: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, https://arxiv.org/abs/1912.00049.
Wraps ``torchattacks.Square`` with ``norm='Linf'``.

Starting from vertical stripes of +-eps, each query changes a random square window to a random
vertex of the ball (+-eps per channel) and keeps the change when the margin loss drops; the
window shrinks on a fixed schedule of the query budget. It only reads the model's logits, never its
gradients (``gradient_free = True``), which makes it the standard check for gradient masking: a
defense that resists PGD but not Square is masking gradients.

There is no step size (``alpha`` raises ConfigError). Targeted modes are supported (the margin is
then taken towards the target class).

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale (e.g. 8/255).
    alpha: must be None.
    targeted: None, ``random`` or ``least-likely``.
    seed: seed of the random search (via a seed drawn from torch's generator after
        :class:`bench.attack.Attack` seeded it, so the runner's per-batch seeds reach it).
    n_queries: query budget per image and restart (default 5000).
    n_restarts: number of restarts (default 1).
    p_init: initial fraction of pixels in a square (default 0.8).
    loss: ``margin`` or ``ce`` (default ``margin``).

Example::

    python -m bench run --attack square --eps 8/255
"""

from __future__ import annotations

from typing import Any

import torchattacks
from torch import nn

from bench.attack import TorchAttack
from bench.attacks._common import check_steps, no_step, torch_seed
from bench.errors import ConfigError
from bench.registry import register_attack

LOSSES = ("margin", "ce")


@register_attack("square", n_queries=5000)
class Square(TorchAttack):
    """Square Attack (Andriushchenko et al. 2020), L-inf, gradient-free.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: must be None (no step size).
        targeted: None, ``random`` or ``least-likely``.
        seed: seed of the random search.
        n_queries: query budget per image and restart.
        n_restarts: number of restarts.
        p_init: initial fraction of pixels in a square.
        loss: ``margin`` or ``ce``.

    Example: ``python -m bench run --attack square --eps 8/255``
    """

    gradient_free = True
    audit_role = "score-based"

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, n_queries: int = 5000, n_restarts: int = 1, p_init: float = 0.8,
                 loss: str = "margin") -> None:
        super().__init__(eps, alpha, targeted, seed)
        no_step(self)
        if loss not in LOSSES:
            raise ConfigError(f"loss={loss!r}: use one of {', '.join(LOSSES)}.")
        if not 0 < p_init <= 1:
            raise ConfigError(f"p_init={p_init!r}: use a fraction in (0, 1], e.g. 0.8.")
        self.n_queries = check_steps(n_queries, "n_queries")
        self.n_restarts = check_steps(n_restarts, "n_restarts")
        self.p_init = float(p_init)
        self.loss = loss

    def make(self, model: nn.Module) -> Any:
        return torchattacks.Square(model, norm="Linf", eps=self.eps, n_queries=self.n_queries,
                                   n_restarts=self.n_restarts, p_init=self.p_init,
                                   loss=self.loss, seed=torch_seed())
