"""Random-sign noise at the full budget: the baseline every real attack should beat, L-inf.

Not an attack from a paper but the usual control for a robustness table (random perturbations
of the same L-inf size as the attacks'; cf. Goodfellow et al., https://arxiv.org/abs/1412.6572,
on how rarely random directions fool a model): each pixel moves by exactly ``+eps`` or ``-eps``
with probability 1/2, independently, and the result is clipped to [0,1]::

    x_adv = clip(x + eps * s, 0, 1),   s ~ Uniform({-1, +1})^(C x H x W)

It reads neither the model nor the labels (``gradient_free = True``). It declares itself a
control (``baseline = True``): the attack contract tests do not require it to lower accuracy, as
they do every real attack. The randomness comes from torch's global generator, which
:class:`bench.attack.Attack` seeds from ``seed`` (or the runner's per-batch seed) before every
call, so a run is reproducible on a given device.

A gap between noise and a gradient attack at the same eps shows the model's error comes from
adversarial directions, not from the perturbation's size. There is no step size and no target
(``alpha`` and ``targeted`` raise ConfigError).

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N (unused); output has the same shape
and range.

Arguments:
    eps: L-inf magnitude of the noise on the [0,1] scale (e.g. 8/255).
    alpha: must be None.
    targeted: must be None.
    seed: seed of the noise.

Example::

    python -m bench run --attack noise --eps 8/255
"""

from __future__ import annotations

import torch
from torch import nn

from bench.attack import Attack
from bench.attacks._common import no_step, untargeted_only
from bench.registry import register_attack


@register_attack("noise")
class RandomSignNoise(Attack):
    """Uniform random-sign noise of magnitude ``eps`` per pixel, clipped to [0,1]; a baseline.

    Args:
        eps: L-inf magnitude of the noise.
        alpha: must be None.
        targeted: must be None (the noise ignores labels).
        seed: seed of the noise.

    Example: ``python -m bench run --attack noise --eps 8/255``
    """

    gradient_free = True
    baseline = True
    audit_role = "noise"

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(eps, alpha, targeted, seed)
        untargeted_only(self)
        no_step(self)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sign = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        return (x + self.eps * sign).clamp(0.0, 1.0)
