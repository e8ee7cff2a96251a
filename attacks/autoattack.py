"""APGD and AutoAttack (Croce and Hein), L-inf, wrapping ``torchattacks``.

Paper: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690
(reference code: https://github.com/fra31/auto-attack).

* APGD: PGD with an adaptive step size (halved when progress stalls, starting at ``2*eps``),
  momentum, and a random start; returns the best point found. ``loss`` is ``ce`` (``apgd``) or the
  scale-invariant DLR loss (``apgd-dlr``).
* APGD-T (``apgd-t``): APGD on the targeted DLR loss, run in turn towards each of the
  ``n_target_classes`` classes with the highest logits other than the true one (default
  ``min(9, n_classes - 1)``, the reference code's), each only on the images not yet fooled.
* AutoAttack, version ``standard``: APGD-CE, then APGD-T (targeted DLR), FAB-T and Square (5000
  queries), each run only on the images still correctly classified. ``n_classes`` is read from the
  model's output (one forward pass on the batch).

Deviation from ``torchattacks.AutoAttack``'s defaults, to match the paper's standard version: that
class builds APGD, APGD-T and FAB-T with 10 iterations and ``n_classes - 1`` target classes; here
they run ``steps`` iterations (default 100) and ``min(9, n_classes - 1)`` target classes, as in the
reference code (999 target classes on ImageNet would be slow and is not what papers report).

Both attacks choose their own step sizes (``alpha`` raises ConfigError) and are untargeted only
(``targeted`` raises ConfigError; AutoAttack runs its own targeted sub-attacks).

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale (e.g. 8/255).
    alpha: must be None.
    targeted: must be None.
    seed: seed of the random starts (and of Square's random search); the torchattacks classes
        get a seed drawn from torch's generator after :class:`bench.attack.Attack` seeded it,
        so the runner's per-batch seeds reach them too.
    steps: iterations of APGD (and AutoAttack's APGD-T and FAB-T) (default 100).
    n_restarts: APGD random restarts (default 1).
    loss: APGD only, ``ce`` or ``dlr`` (default ``ce``).
    n_queries: AutoAttack only, Square's query budget (default 5000).

Example::

    python -m bench run --attack apgd --eps 8/255
    python -m bench run --attack autoattack --eps 8/255
"""

from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import nn

from bench.attack import TorchAttack
from bench.attacks._common import check_steps, no_step, torch_seed, untargeted_only
from bench.errors import ConfigError
from bench.registry import register_attack

LOSSES = ("ce", "dlr")
TARGET_CLASSES = 9  # the reference code's n_target_classes for APGD-T and FAB-T


@register_attack("apgd", steps=100, n_restarts=1, loss="ce")
@register_attack("apgd-dlr", steps=100, n_restarts=1, loss="dlr")
class APGD(TorchAttack):
    """Auto-PGD (Croce and Hein 2020): PGD with an adaptive step size.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: must be None (the step size is adaptive).
        targeted: must be None (untargeted only).
        seed: seed of the random start.
        steps: number of iterations.
        n_restarts: number of random restarts.
        loss: ``ce`` or ``dlr`` (DLR needs at least 3 classes).

    Example: ``python -m bench run --attack apgd --eps 8/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 100, n_restarts: int = 1, loss: str = "ce") -> None:
        super().__init__(eps, alpha, targeted, seed)
        untargeted_only(self)
        no_step(self)
        if loss not in LOSSES:
            raise ConfigError(f"loss={loss!r}: use one of {', '.join(LOSSES)}.")
        self.steps = check_steps(steps)
        self.n_restarts = check_steps(n_restarts, "n_restarts")
        self.loss = loss

    def make(self, model: nn.Module) -> Any:
        return torchattacks.APGD(model, norm="Linf", eps=self.eps, steps=self.steps,
                                 n_restarts=self.n_restarts, seed=torch_seed(), loss=self.loss)


@register_attack("apgd-t", steps=100, n_restarts=1)
class APGDT(TorchAttack):
    """Targeted APGD on the DLR loss, over the top target classes (Croce and Hein 2020).

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: must be None (the step size is adaptive).
        targeted: must be None (it picks its own targets).
        seed: seed of the random start.
        steps: iterations per target class.
        n_restarts: random restarts per target class.
        n_target_classes: how many of the highest-ranked wrong classes to target in turn (None:
            ``min(9, n_classes - 1)``).

    Example: ``python -m bench run --attack apgd-t --eps 8/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 100, n_restarts: int = 1,
                 n_target_classes: int | None = None) -> None:
        super().__init__(eps, alpha, targeted, seed)
        untargeted_only(self)
        no_step(self)
        self.steps = check_steps(steps)
        self.n_restarts = check_steps(n_restarts, "n_restarts")
        self.n_target_classes = (None if n_target_classes is None
                                 else check_steps(n_target_classes, "n_target_classes"))

    def make(self, model: nn.Module, n_classes: int = 10) -> Any:
        if n_classes < 4:
            raise ConfigError(f"apgd-t needs at least 4 classes (its targeted DLR loss), the "
                              f"model has {n_classes}: use apgd instead.")
        atk = torchattacks.APGDT(model, norm="Linf", eps=self.eps, steps=self.steps,
                                 n_restarts=self.n_restarts, seed=torch_seed(),
                                 n_classes=n_classes)
        atk.n_target_classes = min(self.n_target_classes or TARGET_CLASSES, n_classes - 1)
        return atk

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        return self.make(model, n_classes)(x, y)


@register_attack("autoattack", steps=100, n_queries=5000)
class AutoAttack(TorchAttack):
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square) (Croce and Hein 2020).

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: must be None (every sub-attack picks its own steps).
        targeted: must be None (untargeted only).
        seed: seed of the sub-attacks' randomness.
        steps: iterations of APGD-CE, APGD-T and FAB-T.
        n_queries: Square's query budget.

    Example: ``python -m bench run --attack autoattack --eps 8/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 100, n_queries: int = 5000) -> None:
        super().__init__(eps, alpha, targeted, seed)
        untargeted_only(self)
        no_step(self)
        self.steps = check_steps(steps)
        self.n_queries = check_steps(n_queries, "n_queries")

    def make(self, model: nn.Module, n_classes: int = 10) -> Any:
        """The torchattacks ensemble, with the reference code's iterations and target counts."""
        if n_classes < 4:
            raise ConfigError(f"autoattack needs at least 4 classes (its targeted DLR loss), the "
                              f"model has {n_classes}: use apgd or square instead.")
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=self.eps, version="standard",
                                      n_classes=n_classes, seed=torch_seed())
        for sub in atk._autoattack.attacks:
            if isinstance(sub, torchattacks.Square):
                sub.n_queries = self.n_queries
            else:  # APGD, APGDT, FAB
                sub.steps = self.steps
            if hasattr(sub, "n_target_classes"):
                sub.n_target_classes = min(TARGET_CLASSES, n_classes - 1)
        return atk

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        return self.make(model, n_classes)(x, y)
