"""Feature-denoising networks, adversarially trained (a ``model`` defense: replaces the classifier).

Paper: Xie, Wu, van der Maaten, Yuille and He, "Feature Denoising for Improving Adversarial
Robustness", CVPR 2019 (https://arxiv.org/abs/1812.03411; code:
github.com/facebookresearch/ImageNet-Adversarial-Training). A ResNet gets a denoising block
``y = x + BN(Conv1x1(op(x)))`` after the last residual block of res2, res3, res4 and res5
(:mod:`._blocks`, :mod:`._resnet`) and is trained end to end by the paper's
adversarial training (:mod:`bench.defenses._adv_train`): targeted PGD towards a random wrong class,
80% of batches from a random start and 20% from the clean image, adversarial images only, label
smoothing 0.1, SGD lr 0.1 x batch/256 divided by 10 at 35/110, 70/110 and 95/110 of training.

Variants: ``fd-nonlocal-gauss`` (the paper's best), ``fd-nonlocal-dot``, ``fd-bilateral``
(Gaussian weights) and ``fd-bilateral-dot``, ``fd-mean``, ``fd-median``, ``fd-null`` (1x1 conv
and residual only); the baselines ``fd-baseline`` (the backbone, no blocks) and
``fd-bottleneck`` (+4 standard residual blocks, R-164 on R-152); ``fd-nonlocal-gauss-all`` (a
block after every residual block, x_j subsampled 2x2); Table 1's ablations
``fd-nonlocal-gauss-no1x1`` and ``fd-nonlocal-gauss-nores``.

Scaled down from the paper (recorded in every result row): the backbone is ``small`` below 64 px
(3x3 stem, one basic block per stage, widths 16-32-64-128) and ResNet-152 from 64 px (the paper's;
``backbone=resnet50|resnet101|resnet152|small``, ``depths``, ``widths`` choose); eps is the
dataset's default eps (the paper: 16/255 on ImageNet); PGD takes ``attack_steps=3`` steps (paper
30) of ``eps/16 * max(1, 30/attack_steps)`` (the paper's eps/16 at 30 steps, the paper's total
travel 1.875 eps with fewer); ``epochs=6`` over the dataset's ``fit_images`` training images
(10,000 on MNIST; paper 110 epochs of ImageNet), batch 128 (paper 4096). The lr follows the linear
rule 0.1 x batch/256 above 256 (1.6 at 4096, with the warm-up) but stays 0.1 below: on MNIST with
this short schedule, 0.05 at batch 128 gave 57% PGD-100 accuracy against 81% at 0.1 (fd-null).
Training cost on MNIST in CPU-seconds of one thread: fd-null 150, fd-mean 192, fd-nonlocal-gauss
318 (clean / PGD-100 at eps 0.2 on 300 test images: 98.3/81.0, 98.7/82.7, 98.7/85.0); fd-median
~520 and fd-bilateral* ~420 (from the per-iteration cost). The paper's scale:
``--defense-opt backbone=resnet152 eps=16/255 attack_steps=30 epochs=110 batch_size=4096``.

Example: ``python -m bench run --dataset mnist --defense fd-nonlocal-gauss,fd-null --attack pgd100
--threat whitebox``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench.config import parse_eps
from bench.defense import MODEL, Defense, FitContext
from bench.defenses._adv_train import (
    PAPER_MILESTONES,
    PAPER_WARMUP,
    PGDRecipe,
    Schedule,
    adversarial_train,
    travel_step,
)
from bench.defenses.feature_denoising._resnet import DenoisingResNet
from bench.defenses.feature_denoising._resnet import backbone as make_backbone
from bench.errors import ConfigError
from bench.registry import register_defense, registered_name

PAPER = {"eps": "16/255", "attack_steps": 30, "attack_step": "eps/16", "epochs": 110,
         "batch_size": 4096, "backbone": "resnet152", "train_images": "1.28M (ImageNet)"}
SMALL_BELOW = 64  # inputs smaller than this get the ``small`` backbone by default


@register_defense("fd-nonlocal-gauss", op="nonlocal_gauss",
                  description="Xie et al.: ResNet + 4 non-local Gaussian denoising blocks, adv. "
                              "trained")
@register_defense("fd-nonlocal-dot", op="nonlocal_dot",
                  description="Xie et al.: non-local dot-product denoising blocks (no embedding)")
@register_defense("fd-bilateral", op="bilateral_gauss",
                  description="Xie et al.: 3x3 bilateral denoising blocks, Gaussian weights")
@register_defense("fd-bilateral-dot", op="bilateral_dot",
                  description="Xie et al.: 3x3 bilateral denoising blocks, dot-product weights")
@register_defense("fd-mean", op="mean", description="Xie et al.: 3x3 mean-filter denoising blocks")
@register_defense("fd-median", op="median",
                  description="Xie et al.: 3x3 median-filter denoising blocks")
@register_defense("fd-null", op="null",
                  description="Xie et al.: null blocks (1x1 conv + residual only), adv. trained")
@register_defense("fd-bottleneck", op="bottleneck",
                  description="Xie et al. baseline: +4 standard residual blocks, adv. trained")
@register_defense("fd-baseline", op="none",
                  description="Xie et al. baseline: the same ResNet without blocks, adv. trained")
@register_defense("fd-nonlocal-gauss-all", op="nonlocal_gauss", placement="every",
                  description="Xie et al.: a non-local Gaussian block after every residual block")
@register_defense("fd-nonlocal-gauss-no1x1", op="nonlocal_gauss", conv1x1=False,
                  description="Xie et al. Table 1 ablation: denoising blocks without the 1x1 conv")
@register_defense("fd-nonlocal-gauss-nores", op="nonlocal_gauss", residual=False,
                  description="Xie et al. Table 1 ablation: denoising blocks without the residual")
class FeatureDenoisingNet(Defense):
    """An adversarially trained ResNet with denoising blocks (Xie et al., CVPR 2019).

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        op: inserted blocks: a denoising op, ``bottleneck`` or ``none`` (default nonlocal_gauss).
        placement: ``stage`` (after res2..res5, default) or ``every`` residual block.
        conv1x1, residual: the denoising block's 1x1 conv and skip (Table 1 ablations).
        backbone: ``auto`` (``small`` below 64 px, else ``resnet152``) or a name of
            :data:`bench.defenses.feature_denoising._resnet.BACKBONES`; ``depths``/``widths``
            override it.
        eps: training L-inf radius (default: the dataset's default eps); ``16/255`` works.
        attack_steps: PGD steps in training (default 3; paper 30).
        attack_step: PGD step (default ``eps/16 * max(1, 30/attack_steps)``).
        clean_start: share of batches starting PGD from the clean image (0.2).
        label_smoothing: of the training cross-entropy (0.1).
        epochs: training epochs over the dataset's ``fit_images`` images (default 6; paper 110).
        batch_size: SGD batch (default 128; paper 4096).
        lr: SGD learning rate (default 0.1 x max(1, batch_size / 256): the paper's rule above
            batch 256, 0.1 below).

    Example: ``python -m bench run --defense fd-nonlocal-gauss --attack pgd100``
    """

    kind = MODEL
    needs_training = True

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 op: str = "nonlocal_gauss", placement: str = "stage", conv1x1: bool = True,
                 residual: bool = True, backbone: str = "auto",
                 depths: str | Sequence[int] | None = None,
                 widths: str | Sequence[int] | None = None, eps: float | str | None = None,
                 attack_steps: int = 3, attack_step: float | None = None,
                 clean_start: float = 0.2, label_smoothing: float = 0.1, epochs: int = 6,
                 batch_size: int = 128, lr: float | None = None) -> None:
        super().__init__(input_shape, num_classes)
        size = min(self.input_shape[1:])
        self.backbone = backbone if backbone != "auto" else (
            "small" if size < SMALL_BELOW else "resnet152")
        config = make_backbone(self.backbone, depths, widths)
        self.net = DenoisingResNet(self.input_shape, num_classes, config, op, placement,
                                   conv1x1=conv1x1, residual=residual)
        self.config, self.op, self.placement = config, op, placement
        self.eps = None if eps is None else parse_eps(eps)
        if int(attack_steps) < 0 or int(epochs) < 1 or int(batch_size) < 1:
            raise ConfigError(f"attack_steps={attack_steps}, epochs={epochs}, batch_size="
                              f"{batch_size}: use attack_steps >= 0 and positive epochs and "
                              f"batch_size (the paper: 30, 110, 4096).")
        self.attack_steps, self.attack_step = int(attack_steps), attack_step
        self.clean_start, self.label_smoothing = float(clean_start), float(label_smoothing)
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.lr = float(lr) if lr is not None else 0.1 * max(1.0, self.batch_size / 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N x num_classes) for images ``x`` (N x C x H x W in [0,1])."""
        return self.net(x)

    def recipe(self, eps: float) -> tuple[PGDRecipe, Schedule]:
        """The paper's training attack and schedule at training radius ``eps``."""
        step = (float(self.attack_step) if self.attack_step is not None
                else travel_step(eps, self.attack_steps, 30, 1 / 16))
        attack = PGDRecipe(eps, self.attack_steps, step, targeted=True,
                           clean_start=self.clean_start)
        sched = Schedule(self.epochs, self.batch_size, self.lr, optimizer="sgd",
                         milestones=PAPER_MILESTONES, warmup=PAPER_WARMUP if self.lr > 0.1 else 0,
                         label_smoothing=self.label_smoothing)
        return attack, sched

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Adversarially train on ``ctx``'s training images (see the module docstring)."""
        eps = self.eps if self.eps is not None else ctx.info.default_eps
        attack, sched = self.recipe(eps)
        x, y = ctx.train_tensors()
        name = registered_name(self)
        meta = adversarial_train(self.net, x, y, attack, sched, num_classes=self.num_classes,
                                 device=ctx.device, seed=ctx.seed,
                                 desc=f"adv-train {name} on {ctx.info.name}")
        return {**meta, "eps": eps, "backbone": self.backbone}

    def metadata(self) -> dict[str, Any]:
        """Architecture, training settings and what was scaled down from the paper."""
        return {"op": self.op, "placement": self.placement, "backbone": self.backbone,
                "depths": list(self.config.depths), "widths": list(self.config.widths),
                "eps": self.eps if self.eps is not None else "dataset default",
                "attack_steps": self.attack_steps, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "paper": PAPER,
                "scaled_from_paper": (
                    f"backbone {self.backbone} (paper resnet152); {self.attack_steps} PGD steps "
                    f"(paper 30, step eps/16; here the same total travel); {self.epochs} epochs "
                    f"on fit_images (paper 110 on ImageNet); batch {self.batch_size} (paper 4096), "
                    f"lr {self.lr:g} (paper 0.1 x batch/256, kept at 0.1 below batch 256)")}
