"""Madry adversarial training of the dataset's default classifier (a ``model`` defense).

Paper: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (https://arxiv.org/abs/1706.06083). The target classifier's
architecture (the session passes its name as ``model``; ``cnn`` outside a session) is built fresh
through the model registry and trained from scratch on PGD images only: untargeted L-inf PGD from
a uniform random start in the eps-ball, ascending the cross-entropy of the true label, projected
onto the ball and [0,1] after every step; plain cross-entropy on the adversarial batch
(:mod:`bench.defenses._adv_train`). Madry's MNIST recipe is the reference: eps 0.3, 40 steps of 0.01
(eps/30, total travel 4/3 eps), Adam lr 1e-4, batch 50, 100k iterations.

Scaled down (recorded in every result row): eps is the dataset's default eps (0.2 on MNIST and
digits); ``attack_steps=10`` steps of ``eps/30 * max(1, 40/attack_steps)`` (Madry's step at 40
steps, the same total travel 4/3 eps with fewer); ``epochs=6`` over the dataset's ``fit_images``
training images (10,000 on MNIST) at batch 128 with Adam lr 1e-3 (Madry: ~83 epochs of 60,000 at
lr 1e-4). On MNIST this costs 360 CPU-seconds of one thread and gives 99.0% clean, 81.7% PGD-100
accuracy at eps 0.2 (300 test images). The paper's scale: ``--defense-opt eps=0.3
attack_steps=40 epochs=84 batch_size=50 lr=0.0001 --fit-images 60000``.

Example: ``python -m bench run --dataset mnist --defense at-pgd --attack pgd100 --eps 0.2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench.config import parse_eps
from bench.defense import MODEL, Defense, FitContext
from bench.defenses._adv_train import PGDRecipe, Schedule, adversarial_train, travel_step
from bench.errors import ConfigError
from bench.registry import MODELS, register_defense

PAPER = {"eps": 0.3, "attack_steps": 40, "attack_step": 0.01, "optimizer": "adam",
         "lr": 1e-4, "batch_size": 50, "iterations": 100_000, "train_images": 60_000}


def fresh_classifier(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """An untrained classifier ``name`` of the model registry for ``input_shape`` inputs."""
    entry = MODELS.get(name)
    opts: dict[str, Any] = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    try:  # families that can load pretrained weights (timm) are asked not to
        entry.resolve(pretrained=False)
        opts["pretrained"] = False
    except ConfigError:
        pass
    try:
        net = entry.build(**opts)
    except TypeError:
        if "pretrained" not in opts:
            raise
        net = None  # a family that only comes pretrained refused pretrained=False
    if net is None or getattr(net, "pretrained", False):
        raise ConfigError(f"at-pgd trains its model from scratch, but '{name}' only comes "
                          f"pretrained: pass --defense-opt at-pgd.model=NAME of a trainable "
                          f"architecture (see: python -m bench list models).")
    return net


@register_defense("at-pgd")
class MadryAT(Defense):
    """Madry et al.'s PGD adversarial training of the target classifier's architecture.

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        model: the architecture (the session passes the target classifier's name; ``cnn``).
        eps: training L-inf radius (default: the dataset's default eps).
        attack_steps: PGD steps in training (default 10; Madry's MNIST 40).
        attack_step: PGD step (default ``eps/30 * max(1, 40/attack_steps)``).
        epochs: epochs over the dataset's ``fit_images`` training images (default 6).
        batch_size: batch (default 128; Madry's MNIST 50).
        lr: Adam learning rate (default 1e-3; Madry's MNIST 1e-4).

    Example: ``python -m bench run --dataset mnist --defense at-pgd --attack pgd100 --eps 0.2``
    """

    kind = MODEL
    needs_training = True

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 model: str = "cnn", eps: float | str | None = None, attack_steps: int = 10,
                 attack_step: float | None = None, epochs: int = 6, batch_size: int = 128,
                 lr: float = 1e-3) -> None:
        super().__init__(input_shape, num_classes)
        if int(attack_steps) < 0 or int(epochs) < 1 or int(batch_size) < 1 or not lr > 0:
            raise ConfigError(f"at-pgd attack_steps={attack_steps}, epochs={epochs}, batch_size="
                              f"{batch_size}, lr={lr}: use attack_steps >= 0 and positive "
                              f"epochs, batch_size and lr (Madry's MNIST: 40, 84, 50, 0.0001).")
        self.model_name = model
        self.net = fresh_classifier(model, self.input_shape, num_classes)
        self.eps = None if eps is None else parse_eps(eps)
        self.attack_steps, self.attack_step = int(attack_steps), attack_step
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N x num_classes) for images ``x`` (N x C x H x W in [0,1])."""
        return self.net(x)

    def recipe(self, eps: float) -> tuple[PGDRecipe, Schedule]:
        """Madry's training attack (untargeted, random start) and the (Adam) schedule."""
        step = (float(self.attack_step) if self.attack_step is not None
                else travel_step(eps, self.attack_steps, 40, 1 / 30))
        attack = PGDRecipe(eps, self.attack_steps, step, targeted=False, clean_start=0.0)
        sched = Schedule(self.epochs, self.batch_size, self.lr, optimizer="adam",
                         weight_decay=0.0, milestones=())
        return attack, sched

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Adversarially train from scratch on ``ctx``'s training images."""
        eps = self.eps if self.eps is not None else ctx.info.default_eps
        attack, sched = self.recipe(eps)
        x, y = ctx.train_tensors()
        meta = adversarial_train(self.net, x, y, attack, sched, num_classes=self.num_classes,
                                 device=ctx.device, seed=ctx.seed,
                                 desc=f"adv-train at-pgd ({self.model_name}) on {ctx.info.name}")
        return {**meta, "eps": eps, "model": self.model_name}

    def metadata(self) -> dict[str, Any]:
        """Architecture, training settings and what was scaled down from Madry et al."""
        return {"model": self.model_name, "eps": self.eps if self.eps is not None else
                "dataset default", "attack_steps": self.attack_steps, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "paper": PAPER,
                "scaled_from_paper": (
                    f"{self.attack_steps} PGD steps (Madry's MNIST 40 of eps/30; here the same "
                    f"total travel); {self.epochs} epochs on fit_images at batch "
                    f"{self.batch_size}, Adam lr {self.lr:g} (Madry: 100k iterations of 50 at "
                    f"1e-4)")}
