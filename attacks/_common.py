"""Helpers shared by the attack plugins: step rules, projection, loss gradients, option checks.

Not a plugin (the leading underscore keeps :mod:`bench.attacks` from importing it as one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.attack import Attack
from bench.errors import ConfigError


def pgd_alpha(eps: float, steps: int) -> float:
    """Default PGD step: ``min(eps/10, 2.5*eps/steps)``.

    ``eps/10`` up to 25 steps (the feature-denoising paper's setting for 10 steps), Madry et al.'s
    ``2.5*eps/steps`` beyond (e.g. ``eps/40`` for 100 steps).
    """
    return min(eps / 10, 2.5 * eps / steps)


def check_steps(steps: int, what: str = "steps") -> int:
    """Return ``steps`` as an int, or raise ConfigError when it is not a positive integer."""
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"{what}={steps!r}: use a positive integer, e.g. {what}=10.")
    return int(steps)


def untargeted_only(attack: Attack) -> None:
    """Raise ConfigError when an untargeted-only attack is built with a target mode."""
    if attack.targeted is not None:
        raise ConfigError(f"{type(attack).__name__} is untargeted only (got targeted="
                          f"{attack.targeted!r}): drop --targeted or pick a targeted attack "
                          f"such as pgd100.")


def no_step(attack: Attack) -> None:
    """Raise ConfigError when ``alpha`` is set on an attack that has no step size to set."""
    if attack.alpha is not None:
        raise ConfigError(f"{type(attack).__name__} has no step size to set (got alpha="
                          f"{attack.alpha!r}): drop --alpha.")


def check_alpha(alpha: float | None) -> None:
    """Raise ConfigError for a non-positive step size."""
    if alpha is not None and not alpha > 0:
        raise ConfigError(f"alpha={alpha!r}: the step size must be > 0, e.g. --alpha 2/255.")


def torch_seed() -> int:
    """A seed drawn from torch's global generator, for torchattacks classes that reseed torch
    themselves (APGD, Square, AutoAttack's parts).

    :meth:`bench.attack.Attack.__call__` seeds that generator from the attack's ``seed`` or the
    runner's per-batch seed, so passing this on makes both reach those classes (a fixed
    ``self.seed`` would give every batch the same random starts).
    """
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` projected onto the L-inf ``eps``-ball around ``x`` and onto [0,1] (N x C x H x W
    tensors)."""
    return torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)


def input_gradient(model: nn.Module, x: torch.Tensor,
                   objective: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Gradient of ``objective(model(x)).sum()`` w.r.t. ``x`` (same shape as ``x``).

    ``objective`` maps logits (N x K) to one value per image (N), the quantity the attack
    ascends; summing keeps the per-image gradients independent.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = objective(model(x)).sum()
        (grad,) = torch.autograd.grad(value, x)
    return grad.detach()


def ce_objective(labels: torch.Tensor, targeted: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-image cross-entropy to ascend: ``CE(z, y)``, or ``-CE(z, t)`` towards targets ``t``."""
    sign = -1.0 if targeted else 1.0

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return sign * nn.functional.cross_entropy(logits, labels, reduction="none")

    return objective
