"""The training set of the HGD family (Liao et al., CVPR 2018, Table 1), scaled.

Every clean image is attacked six times: FGSM on the target, on the surrogate and on their
ensemble (mean logits), and I-FGSM2/4/8 on the ensemble, with step eps/n and no random start. Each
adversarial image has its own radius eps = k/16 * eps_max, k uniform in 1..16 (on ImageNet,
eps_max = 16/255 gives the paper's integers [1,16]/255). The paper's 30K images x 7 attacks on
three ImageNet models become ``fit_images`` x 6 on the dataset's two models. The four ensemble
attacks share their first gradient (all start at the clean image), so each model takes 13 gradient
passes per clean image, not 16. The set is held in memory (float32, 7 x fit_images images: about
7.5 MB per clean image at 3x299x299, so ~37 GB for 5,000 ImageNet images and ~225 GB for the
paper's 30K); only the chosen training images are read, and a set larger than the memory available
is refused up front with the --fit-images that would fit, rather than killed midway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.defense import FitContext
from bench.errors import ConfigError
from bench.runtime import batches, check_memory, progress

RECIPE = (("target", 1), ("surrogate", 1), ("ensemble", 1),  # (attacked model, I-FGSM steps);
          ("ensemble", 2), ("ensemble", 4), ("ensemble", 8))  # 1 step is FGSM
EPS_LEVELS = 16


def sample_eps(n: int, eps_max: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` radii k/16 * eps_max, k uniform in 1..16 (shape N)."""
    return torch.randint(1, EPS_LEVELS + 1, (n,), generator=generator).float() * (
        eps_max / EPS_LEVELS)


def _grad_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)[0].sign()


def ifgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, steps: int,
          first: torch.Tensor | None = None) -> torch.Tensor:
    """Untargeted I-FGSM with a per-sample L-inf radius ``eps`` (N) and step eps/steps;
    ``steps=1`` is FGSM. ``x``: N x C x H x W in [0,1]; returns x_adv in [0,1] and in the ball.
    ``first``: the gradient sign at ``x`` when already known (the same for every step count)."""
    eps = eps.view(-1, 1, 1, 1).to(x)
    x_adv = x.clone()
    for i in range(steps):
        sign = first if i == 0 and first is not None else _grad_sign(model, x_adv, y)
        x_adv = torch.minimum(torch.maximum(x_adv + eps / steps * sign, x - eps), x + eps)
        x_adv = x_adv.clamp(0.0, 1.0)
    return x_adv.detach()


class _Ensemble(nn.Module):
    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)


def make_training_set(ctx: FitContext, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """The adversarial set of :data:`RECIPE` for ``ctx.train_tensors()`` (6 per clean image).

    Returns ``x_adv`` (6N x C x H x W, grouped by attack), ``src`` (index of the clean image),
    ``eps`` and ``attack`` (index into RECIPE), plus the clean ``x`` (N x C x H x W) and ``y``.
    """
    if not ctx.surrogates:
        raise ConfigError("HGD's training set needs a second model: pass one in "
                          "FitContext.surrogates (the dataset's models list its surrogate).")
    n = len(RECIPE)
    check_memory(ctx.budget, (n + 1) * math.prod(ctx.info.input_shape) * 4,
                 f"HGD's training set ({ctx.budget} clean images x {n} attacks at "
                 f"{'x'.join(map(str, ctx.info.input_shape))}, float32)", "--fit-images")
    x, y = ctx.train_tensors()
    models = {"target": ctx.classifier, "surrogate": ctx.surrogates[0],
              "ensemble": _Ensemble([ctx.classifier, ctx.surrogates[0]])}
    gen = torch.Generator().manual_seed(ctx.seed)
    eps = [sample_eps(len(x), ctx.info.eps_max, gen) for _ in RECIPE]
    x_adv = torch.empty((n * len(x), *x.shape[1:]), dtype=x.dtype)  # filled in place: no 2x peak
    for idx in progress(list(batches(len(x), batch_size)), desc="HGD training set"):
        xb, yb = ctx.on_device(x[idx]), ctx.on_device(y[idx])
        first = {name: _grad_sign(m, xb, yb) for name, m in models.items()}
        for a, (which, steps) in enumerate(RECIPE):
            x_adv[a * len(x) + idx] = ifgsm(models[which], xb, yb, eps[a][idx], steps,
                                            first[which]).cpu()
    return {"x_adv": x_adv, "src": torch.arange(len(x)).repeat(n), "eps": torch.cat(eps),
            "attack": torch.arange(n).repeat_interleave(len(x)), "x": x, "y": y}
