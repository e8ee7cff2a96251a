"""DeepFool (Moosavi-Dezfooli et al.), run as an L2 attack and projected into the L-inf ball.

Paper: Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to fool deep
neural networks", CVPR 2016, https://arxiv.org/abs/1511.04599. Wraps ``torchattacks.DeepFool``.

DeepFool linearises the classifier around the current point and steps to the nearest linearised
decision boundary (minimal L2 step), overshooting by ``1 + overshoot``, until the label flips or
``steps`` iterations pass. It minimises L2 distance and knows no budget, so its output is then
**projected onto the L-inf eps-ball around x and onto [0,1]** (``x + clip(x_df - x, -eps, eps)``):
images whose minimal perturbation fits in the ball stay adversarial, the others are shrunk and
usually are not. The reported robust accuracy is therefore that of "DeepFool's direction, clipped
to the budget", not of a budget-aware attack; use pgd* or apgd for that.

Untargeted only (DeepFool has no targeted form): ``targeted`` raises ConfigError. There is no step
size to set, so ``alpha`` raises ConfigError too.

Cost: ``torchattacks.DeepFool`` loops over images and builds each Jacobian with one backward pass
per class, i.e. ``N * K * steps`` backward passes in the worst case; fine for 10 classes, slow for
ImageNet's 1000.

Norm: L2 (minimal perturbation), then projected to L-inf. Inputs: images N x C x H x W in [0,1],
labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius of the projection, on the [0,1] scale.
    alpha: must be None.
    targeted: must be None.
    seed: unused (DeepFool is deterministic); kept for the common interface.
    steps: maximum number of DeepFool iterations (default 50).
    overshoot: relative overshoot past the boundary (default 0.02).

Example::

    python -m bench run --attack deepfool --eps 8/255
"""

from __future__ import annotations

from typing import Any

import torch
import torchattacks
from torch import nn

from bench.attack import TorchAttack
from bench.attacks._common import check_steps, no_step, project, untargeted_only
from bench.errors import ConfigError
from bench.registry import register_attack


@register_attack("deepfool", steps=50, overshoot=0.02)
class DeepFool(TorchAttack):
    """DeepFool (L2 minimal perturbation), projected onto the L-inf eps-ball and [0,1].

    Args:
        eps: L-inf radius of the projection.
        alpha: must be None (no step size).
        targeted: must be None (untargeted only).
        seed: unused; DeepFool is deterministic.
        steps: maximum number of iterations.
        overshoot: relative overshoot past the linearised boundary.

    Example: ``python -m bench run --attack deepfool --eps 8/255``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 50, overshoot: float = 0.02) -> None:
        super().__init__(eps, alpha, targeted, seed)
        untargeted_only(self)
        no_step(self)
        if not overshoot >= 0:
            raise ConfigError(f"overshoot={overshoot!r}: use a value >= 0, e.g. 0.02.")
        self.steps = check_steps(steps)
        self.overshoot = float(overshoot)

    def make(self, model: nn.Module) -> Any:
        return torchattacks.DeepFool(model, steps=self.steps, overshoot=self.overshoot)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.make(model)(x, y)
        if isinstance(out, tuple):  # some torchattacks versions return (images, target_labels)
            out = out[0]
        return project(out.to(x.device), x, self.eps)
