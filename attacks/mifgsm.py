"""MI-FGSM: iterative FGSM with momentum (Dong et al.), L-inf.

Paper: Dong, Liao, Pang, Su, Zhu, Hu and Li, "Boosting Adversarial Attacks with Momentum",
CVPR 2018, https://arxiv.org/abs/1710.06081.

From ``x`` (no random start), for ``steps`` iterations::

    g <- decay * g + grad / ||grad||_1          (per image)
    x_adv <- clip_{x, eps}(x_adv + alpha * sign(g))

with ``grad`` the gradient of the cross-entropy (of ``-CE`` towards the target when targeted).
Default ``alpha = eps / steps`` and ``decay = 1.0``, the paper's settings.

Implemented here rather than wrapping ``torchattacks.MIFGSM``: that class divides by the mean
absolute gradient with no guard, so once an image's gradient is exactly zero (a saturated softmax
in float32) its momentum becomes NaN for the rest of the run and the image stops moving for good
(``torch.sign(nan)`` is 0 on CPU). Here the L1 norm is floored at 1e-12, so a zero gradient adds
nothing and the accumulated momentum keeps the image moving.

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale (e.g. 16/255).
    alpha: step size (default ``eps / steps``).
    targeted: None, ``random`` or ``least-likely``.
    seed: seed of the random targets (the attack is otherwise deterministic).
    steps: number of iterations (default 10).
    decay: momentum factor mu (default 1.0).

Example::

    python -m bench run --attack mifgsm10 --eps 16/255
"""

from __future__ import annotations

import torch
from torch import nn

from bench.attack import Attack
from bench.attacks._common import ce_objective, check_alpha, check_steps, input_gradient, project
from bench.errors import ConfigError
from bench.registry import register_attack


@register_attack("mifgsm10", steps=10, decay=1.0)
class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018).

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: step size; None uses ``eps / steps``.
        targeted: None, ``random`` or ``least-likely``.
        seed: seed of the random targets.
        steps: number of iterations.
        decay: momentum factor.

    Example: ``python -m bench run --attack mifgsm10 --eps 16/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 10, decay: float = 1.0) -> None:
        check_alpha(alpha)
        super().__init__(eps, alpha, targeted, seed)
        if not decay >= 0:
            raise ConfigError(f"decay={decay!r}: the momentum factor must be >= 0, e.g. 1.0.")
        self.steps = check_steps(steps)
        self.decay = float(decay)

    def step_size(self) -> float:
        return self.eps / self.steps if self.alpha is None else float(self.alpha)

    row_independent = True  # no randomness; per-image sums and norms

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        targeted = self.targeted is not None
        labels = self.target_labels(model, x, y) if targeted else y
        objective = ce_objective(labels, targeted)
        alpha = self.step_size()
        dims = tuple(range(1, x.dim()))
        momentum = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(self.steps):
            grad = input_gradient(model, x_adv, objective)
            l1 = grad.abs().sum(dim=dims, keepdim=True).clamp_min(1e-12)
            momentum = self.decay * momentum + grad / l1
            x_adv = project(x_adv + alpha * momentum.sign(), x, self.eps)
        return x_adv
