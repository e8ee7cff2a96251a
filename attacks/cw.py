"""The L-inf Carlini-Wagner attack: PGD on the CW margin loss (as in Madry et al.'s evaluations).

Papers: Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017,
https://arxiv.org/abs/1608.04644 (the margin loss, their ``f_6``); Madry et al., "Towards Deep
Learning Models Resistant to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083
(the "CW" rows of their tables: PGD maximising that loss inside the L-inf ball).

Why implemented here rather than wrapping ``torchattacks.CW``: ``torchattacks.CW`` is the original
L2 optimisation (Adam in tanh space with a ``c``-weighted L2 penalty); it has no ``eps`` and its
perturbation is unbounded in L-inf, so it does not answer "is the model robust inside the
eps-ball?" and clipping its output afterwards would be a different, weaker attack. The L-inf "CW"
attack reported by Madry et al. and in robustness evaluations is PGD with the margin loss, which is
what this module implements.

Objective, ascended by signed-gradient steps from a uniform random start in the ball::

    untargeted:  min( max_{j != y} z_j - z_y , kappa )
    targeted:    min( z_t - max_{j != t} z_j , kappa )

``z`` are the logits. With ``kappa = 0`` (default) an image stops moving once it is misclassified
(the clipped loss has zero gradient), so the returned last iterate stays adversarial; Madry et
al.'s MNIST challenge code uses ``kappa = 50``. Step rule as PGD's: ``min(eps/10, 2.5*eps/steps)``.

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale (e.g. 8/255).
    alpha: step size (default ``min(eps/10, 2.5*eps/steps)``).
    targeted: None, ``random`` or ``least-likely``.
    seed: seed of the random start and random targets.
    steps: number of iterations (default 100).
    kappa: confidence at which the margin loss saturates (default 0).
    random_start: start from a uniform point of the ball (default True).

Example::

    python -m bench run --attack cw100 --eps 8/255
"""

from __future__ import annotations

import torch
from torch import nn

from bench.attack import Attack
from bench.attacks._common import check_alpha, check_steps, input_gradient, pgd_alpha, project
from bench.errors import ConfigError
from bench.registry import register_attack


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """The CW margin per image (N), positive exactly when the attack has succeeded.

    Args:
        logits: N x K.
        labels: N true labels (untargeted) or target labels (targeted).
        targeted: ``z_t - max_{j!=t} z_j`` instead of ``max_{j!=y} z_j - z_y``.
    """
    own = logits.gather(1, labels[:, None]).squeeze(1)
    mask = nn.functional.one_hot(labels, logits.shape[1]).bool()
    other = logits.masked_fill(mask, float("-inf")).amax(1)
    return own - other if targeted else other - own


@register_attack("cw100", steps=100, kappa=0.0)
class CWLinf(Attack):
    """PGD on the Carlini-Wagner margin loss inside the L-inf ball (Madry et al.'s "CW").

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: step size; None uses ``min(eps/10, 2.5*eps/steps)``.
        targeted: None, ``random`` or ``least-likely``.
        seed: seed of the random start and random targets.
        steps: number of iterations.
        kappa: confidence at which the loss saturates (0: stop at the decision boundary).
        random_start: start from a uniform point of the eps-ball.

    Example: ``python -m bench run --attack cw100 --eps 8/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 100, kappa: float = 0.0,
                 random_start: bool = True) -> None:
        check_alpha(alpha)
        super().__init__(eps, alpha, targeted, seed)
        if not kappa >= 0:
            raise ConfigError(f"kappa={kappa!r}: the CW confidence must be >= 0, e.g. kappa=0.")
        self.steps = check_steps(steps)
        self.kappa = float(kappa)
        self.random_start = bool(random_start)

    def step_size(self) -> float:
        return pgd_alpha(self.eps, self.steps) if self.alpha is None else float(self.alpha)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._ascend(model, x, y, self._start(x))

    def perturb_rows(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
        """Only ``rows`` ascend, from their part of the random start drawn for the whole batch
        (the objective is a per-image sum, so each image's steps are its own)."""
        if self.targeted == "random":
            return super().perturb_rows(model, x, y, rows)
        return self._ascend(model, x[rows], y[rows], self._start(x)[rows])

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        return (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0.0, 1.0)

    def _ascend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                x_adv: torch.Tensor) -> torch.Tensor:
        targeted = self.targeted is not None
        labels = self.target_labels(model, x, y) if targeted else y

        def objective(logits: torch.Tensor) -> torch.Tensor:
            return cw_margin(logits, labels, targeted).clamp(max=self.kappa)

        alpha = self.step_size()
        for _ in range(self.steps):
            grad = input_gradient(model, x_adv, objective)
            x_adv = project(x_adv + alpha * grad.sign(), x, self.eps)
        return x_adv
