"""FGSM and iterative FGSM (I-FGSM / BIM), L-inf, wrapping ``torchattacks``.

* FGSM: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples",
  ICLR 2015, https://arxiv.org/abs/1412.6572. One signed-gradient step of size ``eps``:
  ``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.
* I-FGSM: Kurakin, Goodfellow and Bengio, "Adversarial Examples in the Physical World",
  ICLR 2017 workshop, https://arxiv.org/abs/1607.02533 (``torchattacks.BIM``). ``steps``
  signed-gradient steps of size ``alpha`` from ``x`` itself (no random start), each projected onto
  the eps-ball and [0,1]. Default ``alpha = eps / steps``, as in the HGD paper's IFGSMn
  (Liao et al., https://arxiv.org/abs/1712.02976), so the budget is reachable but not exceeded.

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale (e.g. 8/255).
    alpha: step size. FGSM: default ``eps`` (a smaller value gives a shorter step); I-FGSM:
        default ``eps / steps``.
    targeted: None, ``random`` or ``least-likely`` (descend the CE of the target class).
    seed: seed of the random targets (both attacks are otherwise deterministic).
    steps: I-FGSM only; number of iterations (default 10; variants fix 2, 4 or 8).

Example::

    python -m bench run --attack fgsm --eps 8/255
    python -m bench run --attack ifgsm4 --eps 16/255
"""

from __future__ import annotations

from typing import Any

import torchattacks
from torch import nn

from bench.attack import TorchAttack
from bench.attacks._common import check_alpha, check_steps
from bench.registry import register_attack


@register_attack("fgsm")
class FGSM(TorchAttack):
    """FGSM (Goodfellow et al. 2015): one L-inf signed-gradient step of size ``eps``.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: step size; None uses ``eps`` (values above ``eps`` are capped at ``eps``).
        targeted: None, ``random`` or ``least-likely``.
        seed: seed of the random targets.

    Example: ``python -m bench run --attack fgsm --eps 8/255``
    """

    audit_role = "single-step"

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0) -> None:
        check_alpha(alpha)
        super().__init__(eps, alpha, targeted, seed)

    def step_size(self) -> float:
        return self.eps if self.alpha is None else min(self.alpha, self.eps)

    def make(self, model: nn.Module) -> Any:
        return torchattacks.FGSM(model, eps=self.step_size())


@register_attack("ifgsm2", steps=2)
@register_attack("ifgsm4", steps=4)
@register_attack("ifgsm8", steps=8)
class IFGSM(TorchAttack):
    """Iterative FGSM (Kurakin et al. 2017; ``torchattacks.BIM``), no random start.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: step size; None uses ``eps / steps``.
        targeted: None, ``random`` or ``least-likely``.
        seed: seed of the random targets.
        steps: number of iterations (default 10).

    Example: ``python -m bench run --attack ifgsm4 --eps 16/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 10) -> None:
        check_alpha(alpha)
        super().__init__(eps, alpha, targeted, seed)
        self.steps = check_steps(steps)

    def step_size(self) -> float:
        return self.eps / self.steps if self.alpha is None else float(self.alpha)

    def make(self, model: nn.Module) -> Any:
        return torchattacks.BIM(model, eps=self.eps, alpha=self.step_size(), steps=self.steps)
