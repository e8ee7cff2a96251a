"""Adversarial training: PGD crafted on the current weights, then one SGD step on those images.

Two recipes share this loop (their settings are chosen by the plugins that use it):

* Xie et al., "Feature Denoising for Improving Adversarial Robustness", CVPR 2019, Sec. 5, and
  the authors' released code: *targeted* PGD towards a class drawn uniformly among the wrong ones,
  L-inf, eps 16/255, step 1/255, 30 steps; a batch starts PGD from a uniform random point of the
  eps-ball with probability 0.8, else from the clean image; the SGD step uses adversarial images
  only; cross-entropy with label smoothing 0.1; SGD with Nesterov momentum 0.9, weight decay 1e-4
  on conv/linear weights, lr 0.1 x batch/256 (linear warm-up over the first 5/110 of training
  from 0.1 when that exceeds 0.1), divided by 10 at 35/110, 70/110 and 95/110 of training.
* Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018:
  untargeted PGD (ascend the cross-entropy of the true label) from a random start, adversarial
  images only, plain cross-entropy.

While PGD runs, the model is in eval mode with frozen parameters (:func:`bench.attack.frozen`,
as the released code uses BN's inference mode during the attack); each update is in train mode.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.accel import to_device
from bench.attack import frozen
from bench.errors import ConfigError
from bench.runtime import batches, check_finite, progress

PAPER_MILESTONES = (35 / 110, 70 / 110, 95 / 110)  # Xie et al.: lr / 10 at epochs 35, 70, 95
PAPER_WARMUP = 5 / 110  # Goyal et al.'s warm-up, used when the scaled lr exceeds 0.1


def travel_step(eps: float, steps: int, paper_steps: int, paper_ratio: float) -> float:
    """The paper's step ``paper_ratio * eps`` when ``steps >= paper_steps``; with fewer steps, the
    step that keeps the paper's total travel ``paper_steps * paper_ratio * eps``."""
    return eps * paper_ratio * max(1.0, paper_steps / max(1, steps))


@dataclass(frozen=True)
class PGDRecipe:
    """The attacker used during training.

    Attributes:
        eps: L-inf radius on the [0,1] scale.
        steps: PGD iterations.
        step: step size on the [0,1] scale.
        targeted: random wrong target class (Xie et al.) or untargeted (Madry et al.).
        clean_start: probability that a batch starts PGD from the clean image (else random).
    """

    eps: float
    steps: int
    step: float
    targeted: bool
    clean_start: float

    def __post_init__(self) -> None:
        if not (0 <= self.eps <= 1 and self.steps >= 0 and self.step >= 0
                and 0 <= self.clean_start <= 1):
            raise ConfigError(f"Adversarial-training attack eps={self.eps}, steps={self.steps}, "
                              f"step={self.step}, clean_start={self.clean_start}: eps and "
                              f"clean_start must lie in [0,1], steps and step be >= 0.")


@dataclass(frozen=True)
class Schedule:
    """The optimisation: epochs, batch, optimizer, learning-rate shape and loss smoothing."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = PAPER_MILESTONES
    warmup: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.optimizer not in (
                "sgd", "adam"):
            raise ConfigError(f"Adversarial training epochs={self.epochs}, batch_size="
                              f"{self.batch_size}, lr={self.lr}, optimizer={self.optimizer!r}: "
                              f"use positive numbers and optimizer sgd or adam.")


def random_targets(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A class drawn uniformly among the ``num_classes - 1`` wrong ones, per label of ``y``."""
    shift = torch.randint(1, num_classes, y.shape, generator=gen).to(y.device)
    return (y + shift) % num_classes


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: PGDRecipe,
          gen: torch.Generator, num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """PGD adversarial images for one batch ``x`` (N x C x H x W in [0,1]), labels ``y``.

    Returns ``(x_adv, targets or None, started_clean)``; ``x_adv`` is within ``eps`` of ``x``
    and in [0,1]. The model's mode and parameters are restored afterwards.
    """
    clean = bool(torch.rand((), generator=gen) < recipe.clean_start)
    target = random_targets(y, num_classes, gen) if recipe.targeted else y
    with frozen(model):
        noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * recipe.eps
        adv = x.clone() if clean else (x + noise).clamp(0.0, 1.0)
        sign = -1.0 if recipe.targeted else 1.0  # descend towards the target / ascend from y
        for _ in range(recipe.steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), target)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + sign * recipe.step * grad.sign()
            adv = torch.min(torch.max(adv, x - recipe.eps), x + recipe.eps).clamp(0.0, 1.0)
    return adv.detach(), (target if recipe.targeted else None), clean


def make_optimizer(model: nn.Module, sched: Schedule) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam; weight decay on conv/linear weights only (the released code)."""
    decay = [p for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
             for p in [m.weight] if p.requires_grad]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": decay, "weight_decay": sched.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if sched.optimizer == "adam":
        return torch.optim.Adam(groups, lr=sched.lr)
    return torch.optim.SGD(groups, lr=sched.lr, momentum=sched.momentum, nesterov=True)


def lr_factor(it: int, total: int, sched: Schedule) -> float:
    """Multiplier of ``sched.lr`` at iteration ``it`` of ``total``: warm-up, then /10 steps."""
    frac = it / max(1, total)
    if sched.warmup and frac < sched.warmup:
        start = min(1.0, 0.1 / sched.lr)
        return start + (1 - start) * frac / sched.warmup
    return 0.1 ** sum(frac >= m for m in sched.milestones)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x_adv: torch.Tensor,
               y: torch.Tensor, label_smoothing: float) -> tuple[float, float]:
    """One update on adversarial images only; returns the (smoothed) cross-entropy and the
    error rate on ``x_adv`` before the update."""
    model.train()
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    check_finite(loss, "adversarial training loss")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item()), float((logits.argmax(1) != y).float().mean())


def adversarial_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: PGDRecipe,
                      sched: Schedule, *, num_classes: int, device: torch.device, seed: int,
                      desc: str) -> dict[str, Any]:
    """Adversarially train ``model`` on images ``x`` (N x C x H x W in [0,1]) and labels ``y``.

    Every batch is replaced by its PGD images (``recipe``) before the update; returns metadata.
    """
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, sched)
    per_epoch = (len(x) + sched.batch_size - 1) // sched.batch_size
    total, it = sched.epochs * per_epoch, 0
    clean_starts, history = 0.0, []
    loss = float("nan")
    bar = progress(total=total, desc=desc)
    for _ in range(sched.epochs):
        fooled = 0.0
        for idx in batches(len(x), sched.batch_size, gen, shuffle=True):
            for group in opt.param_groups:
                group["lr"] = sched.lr * lr_factor(it, total, sched)
            xb, yb = to_device(x[idx], device), to_device(y[idx], device)
            x_adv, _, clean = craft(model, xb, yb, recipe, gen, num_classes)
            loss, error = train_step(model, opt, x_adv, yb, sched.label_smoothing)
            fooled += error * len(idx) / len(x)
            clean_starts += clean / total
            it += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", adv_err=f"{error:.2f}",
                            lr=f"{opt.param_groups[0]['lr']:.3g}")
        history.append(round(fooled, 4))
    bar.close()
    model.eval()
    return {"final_loss": loss, "adv_error_per_epoch": history,
            "clean_start_fraction": round(clean_starts, 4), "iterations": total,
            "train_images": len(x), "fit_seconds": round(time.perf_counter() - start, 1),
            "attack": asdict(recipe), "schedule": asdict(sched)}
