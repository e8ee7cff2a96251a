"""PGD with a uniform random start (Madry et al.), L-inf, wrapping ``torchattacks.PGD``.

Paper: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083.

Starting from ``x + U(-eps, eps)`` (clipped to [0,1]), take ``steps`` signed-gradient ascent steps
of size ``alpha`` on the cross-entropy, projecting onto the L-inf eps-ball and [0,1] after each;
the last iterate is returned.

Default step rule: ``alpha = min(eps/10, 2.5*eps/steps)``. That is ``eps/10`` up to 25 steps
(the feature-denoising paper's ``eps/10`` for 10-step PGD, Xie et al.,
https://arxiv.org/abs/1812.03411) and Madry et al.'s ``2.5*eps/steps`` beyond, so the iterate can
cross the ball 2.5 times whatever the step count: pgd10 and pgd20 use ``eps/10``, pgd40
``eps/16``, pgd100 ``eps/40``, pgd1000 ``eps/400``. The resolved step is recorded with the result.

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale (e.g. 8/255).
    alpha: step size (default: the rule above).
    targeted: None, ``random`` or ``least-likely`` (descend the CE of the target class).
    seed: seed of the random start and random targets.
    steps: number of iterations (default 10; variants fix 10 to 2000).
    random_start: start from a uniform point of the ball (default True).
    restarts: independent random starts (default 1); an image keeps the first restart's result
        that the attacked model misclassifies, else the last one's.

Example::

    python -m bench run --attack pgd100 --eps 8/255
"""

from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import nn

from bench.attack import TorchAttack
from bench.attacks._common import check_alpha, check_steps, pgd_alpha
from bench.errors import ConfigError
from bench.registry import register_attack


@register_attack("pgd10", steps=10)
@register_attack("pgd20", steps=20)
@register_attack("pgd40", steps=40)
@register_attack("pgd100", steps=100)
@register_attack("pgd1000", steps=1000)
@register_attack("pgd2000", steps=2000)
class PGD(TorchAttack):
    """Madry PGD on the cross-entropy with a uniform random start.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: step size; None uses ``min(eps/10, 2.5*eps/steps)``.
        targeted: None, ``random`` or ``least-likely``.
        seed: seed of the random start and random targets.
        steps: number of iterations.
        random_start: start from a uniform point of the eps-ball.
        restarts: independent random starts; per image, the first that fools the model wins.

    Example: ``python -m bench run --attack pgd100 --eps 8/255``
    """

    audit_role = "iterative"

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 10, random_start: bool = True,
                 restarts: int = 1) -> None:
        check_alpha(alpha)
        super().__init__(eps, alpha, targeted, seed)
        self.steps = check_steps(steps)
        self.random_start = bool(random_start)
        self.restarts = check_steps(restarts, "restarts")
        if self.restarts > 1 and not self.random_start:
            raise ConfigError("restarts > 1 needs random_start=True (every restart would be the "
                              "same): drop one of the two options.")

    def step_size(self) -> float:
        return pgd_alpha(self.eps, self.steps) if self.alpha is None else float(self.alpha)

    def make(self, model: nn.Module) -> Any:
        return torchattacks.PGD(model, eps=self.eps, alpha=self.step_size(), steps=self.steps,
                                random_start=self.random_start)

    def perturb_rows(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
        """Only ``rows`` step, from their part of the random start torchattacks draws for the
        whole batch, with the whole batch's loss scale (its mean cross-entropy is divided by
        the batch size): the steps of ``torchattacks.PGD.forward``, op for op, so each row's
        result is the one the whole batch gives it. With restarts, which images restart
        depends on every image: the whole batch is attacked."""
        if self.restarts > 1 or self.targeted == "random":
            return super().perturb_rows(model, x, y, rows)
        eps, alpha, size = self.eps, self.step_size(), len(x)
        labels = (self.target_labels(model, x, y) if self.targeted else y)[rows]
        x_adv = x.clone().detach()
        if self.random_start:  # the draw torchattacks makes, for the whole batch
            x_adv = torch.clamp(x_adv + torch.empty_like(x_adv).uniform_(-eps, eps), min=0,
                                max=1).detach()
        images, x_adv = x[rows], x_adv[rows]
        sign = -1.0 if self.targeted else 1.0
        for _ in range(self.steps):
            x_adv.requires_grad = True
            ce = nn.functional.cross_entropy(model(x_adv), labels, reduction="sum") / size
            cost = -ce if sign < 0 else ce
            grad = torch.autograd.grad(cost, x_adv, retain_graph=False, create_graph=False)[0]
            x_adv = x_adv.detach() + alpha * grad.sign()
            delta = torch.clamp(x_adv - images, min=-eps, max=eps)
            x_adv = torch.clamp(images + delta, min=0, max=1).detach()
        return x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = super().perturb(model, x, y)
        if self.restarts == 1:
            return x_adv
        targets = self.target_labels(model, x, y) if self.targeted else y
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
            left = (pred == targets) != bool(self.targeted)  # not yet fooled
            if not left.any():
                break
            idx = left.nonzero().flatten()
            x_adv[idx] = super().perturb(model, x[idx], y[idx])
        return x_adv
