"""HGD family: denoisers guided by pixels or by the target's high-level representations.

Paper: Liao et al., "Defense against Adversarial Attacks Using High-Level Representation Guided
Denoiser", CVPR 2018 (https://arxiv.org/abs/1712.02976; Appendix B for "x2"). A U-net (or, without
lateral connections, a DAE; see :mod:`bench.defenses.hgd._unet`) predicts the negative noise and
``x_hat = clamp(x* + s * out, 0, 1)`` goes to the fixed target classifier. ``s`` is 1, or 2 for
``dunet-x2`` (the doubled predicted noise of Appendix B, applied at test time only). The clamp is
ours: the defense contract requires images in [0,1]; it is applied in training too.

Variants (only the training loss differs): ``dae`` and ``dunet`` (L1 between ``x_hat`` and the clean
``x``, the paper's "PGD"), ``fgd`` (L1 between the target's topmost conv feature maps),
``lgd`` (L1 between logits), ``cgd`` (cross-entropy with the true label), ``dunet-x2``.

Training set (Table 1, scaled): the ``fit_images`` clean training images attacked by FGSM on the
target, on the surrogate and on their ensemble (mean logits) and I-FGSM2/4/8 on the ensemble (step
eps/n): 6 adversarial images per clean one. Each gets its own eps = k/16 * eps_max with k uniform
in 1..16 (for ImageNet, eps_max = 16/255 gives the paper's [1,16]/255). The set is cached once per
(classifiers, seed, recipe) and shared by every variant; 10% of the clean images (with their 6
versions) are held out for validation. Adam lr 1e-3, times 0.1 (down to 1e-4) when the validation
loss plateaus; the state with the lowest validation loss is kept.

Scaled down from the paper (recorded in every result row): widths are the paper's
(64,128,256,256,256)/(256,256,128,64) times the power of two nearest to size/299 (1/8 for 28-32 px,
1 from 212 px); ``epochs`` defaults to round(16000 / training images), within [2, 30] (2 on MNIST;
the paper trains 20-30). For the paper's scale pass e.g. ``--defense-opt epochs=25``.

On a dataset that declares a recipe (``fit_recipe``, taken for ``epochs`` and ``lr``), its values
replace these defaults: the embedded ``digits`` (1,437 training images of 8x8 digits) trains on 480
clean images x 6 for 3 epochs at lr 3e-3 (then 3e-4): 123 steps, where the MNIST-sized default
would spend 244 on 1,437 x 6 at 1e-3 for the same oblivious accuracy (82-90% under PGD-100 across
seeds and thread counts), so the quickstart's LGD fit (training set, second model, training)
takes ~13 s on 2 CPU cores.

Example: ``python -m bench run --defense lgd --attack pgd100``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import frozen
from bench.defense import Defense, FitContext
from bench.defenses.hgd._trainset import EPS_LEVELS, RECIPE, make_training_set
from bench.defenses.hgd._unet import PAPER_FORWARD, DenoisingUNet, default_widths, width_multiplier
from bench.errors import ConfigError
from bench.registry import register_defense, registered_name
from bench.runtime import batches, check_finite, progress

log = logging.getLogger(__name__)
LOSSES = ("pixel", "feature", "logit", "label")
IMAGE_BUDGET = 16000  # default epochs = round(IMAGE_BUDGET / training images), in [2, 30]
PAPER_LR = 1e-3


def _parse_widths(value: str | Sequence[int] | None, n: int, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        widths = tuple(int(w) for w in items)
    except (TypeError, ValueError):
        widths = ()
    if len(widths) != n or min(widths) < 1:
        raise ConfigError(f"{what}={value!r}: give {n} positive channel counts, e.g. "
                          f"{','.join(str(w // 8) for w in PAPER_FORWARD[:n])}.")
    return widths


@register_defense("dae", loss="pixel", lateral=False,
                  description="HGD paper's DAE: no lateral connections, pixel L1 loss")
@register_defense("dunet", loss="pixel", description="HGD paper's denoising U-net ('PGD'), "
                  "pixel L1 loss")
@register_defense("dunet-x2", loss="pixel", noise_scale=2.0,
                  description="DUNET with doubled predicted noise at test time (HGD App. B)")
@register_defense("fgd", loss="feature", description="HGD: L1 on the target's top conv features")
@register_defense("lgd", loss="logit", description="HGD: L1 on the target's logits")
@register_defense("cgd", loss="label", description="HGD: cross-entropy with the true label")
class HGD(Defense):
    """A denoiser of the HGD family (Liao et al., CVPR 2018); see the module docstring.

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        loss: ``pixel``, ``feature``, ``logit`` or ``label`` (default ``logit``: LGD).
        lateral: U-net lateral connections (False: the DAE).
        noise_scale: multiplies the predicted noise at test time (2 for ``dunet-x2``).
        widths: five feedforward widths, or "8,16,32,32,32" (default: scaled paper widths).
        feedback_widths: four feedback widths (default: ``widths[3::-1]``, as in the paper).
        epochs: training epochs (default: the dataset's recipe, else round(16000 / training
            images), in [2, 30]).
        batch_size: training batch (default 64; the paper's is 60).
        lr: initial Adam learning rate (default: the dataset's recipe, else the paper's 1e-3);
            it drops once by 10x on a plateau.
    """

    needs_training = True
    min_size = 16  # four stride-2 stages
    dataset_recipe = ("epochs", "lr")  # a small dataset's shorter recipe (digits')

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 loss: str = "logit", lateral: bool = True, noise_scale: float = 1.0,
                 widths: str | Sequence[int] | None = None,
                 feedback_widths: str | Sequence[int] | None = None,
                 epochs: int | None = None, batch_size: int = 64, lr: float = PAPER_LR) -> None:
        super().__init__(input_shape, num_classes)
        if loss not in LOSSES:
            raise ConfigError(f"HGD loss={loss!r}: use one of {', '.join(LOSSES)}.")
        if (epochs is not None and int(epochs) < 1) or int(batch_size) < 1 or not lr > 0:
            raise ConfigError(f"HGD epochs={epochs}, batch_size={batch_size}, lr={lr}: all must "
                              f"be positive (e.g. epochs=25 batch_size=60 lr=0.001).")
        size = min(self.input_shape[1:])
        fw = _parse_widths(widths, 5, "widths") or default_widths(size)[0]
        bw = _parse_widths(feedback_widths, 4, "feedback_widths") or tuple(fw[3::-1])
        self.loss, self.lateral, self.noise_scale = loss, bool(lateral), float(noise_scale)
        self.widths, self.feedback_widths = fw, bw
        self.epochs, self.batch_size, self.lr = epochs, int(batch_size), float(lr)
        self.net = self._build_net()

    def _build_net(self) -> nn.Module:
        net = DenoisingUNet(self.input_shape[0], self.widths, self.feedback_widths, self.lateral)
        return net.to(memory_format=torch.channels_last)  # ~1.4x faster convs on CPU

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output ``-dx^`` for ``x`` (N x C x H x W in [0,1]); unbounded."""
        return self.net(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised ``clamp(x + noise_scale * noise(x), 0, 1)``, same shape as ``x``."""
        return (x + self.noise_scale * self.noise(x)).clamp(0.0, 1.0)

    # -- training -----------------------------------------------------------------------------
    def guided_loss(self, clf: nn.Module, x_hat: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
        """Per-image training loss (N) of this variant for denoised ``x_hat`` and clean ``x``."""
        if self.loss == "pixel":
            return (x_hat - x).abs().flatten(1).mean(1)
        if self.loss == "label":
            return F.cross_entropy(clf(x_hat), y, reduction="none")
        guide = clf.forward_features if self.loss == "feature" else clf
        with torch.no_grad():
            target = guide(x)
        return (guide(x_hat) - target).abs().flatten(1).mean(1)

    def _epochs(self, n_train: int) -> int:
        return int(self.epochs or min(30, max(2, round(IMAGE_BUDGET / max(1, n_train)))))

    def _training_key(self, ctx: FitContext) -> dict[str, Any]:
        """What determines the network's weights: not ``noise_scale`` (dunet-x2 shares dunet's)."""
        return {"net": [self.widths, self.feedback_widths, self.lateral], "loss": self.loss,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "recipe": _recipe_key(ctx), "shape": self.input_shape}

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Train with the paper's recipe (scaled; see the module docstring); return metadata."""
        if self.loss == "feature" and not hasattr(ctx.classifier, "forward_features"):
            raise ConfigError("fgd needs a classifier with forward_features (topmost conv maps).")
        key = self._training_key(ctx)
        name = f"{ctx.info.name}-hgd-{'unet' if self.lateral else 'dae'}-{self.loss}"
        # A variant that differs only at test time (dunet-x2) reuses the network trained for
        # noise_scale 1 (dunet); the others always train here (fit runs on a miss or a retrain).
        hit = ctx.cache.load_tensors("hgd-nets", name, key) if self.noise_scale != 1 else None
        if hit is not None:
            self.net.load_state_dict(hit[0])
            return {**hit[1], "shared_weights": True}
        with frozen(ctx.classifier):
            meta = self._train(ctx, self._training_set(ctx))
        ctx.cache.save_tensors(self.net.state_dict(), "hgd-nets", name, key, meta)
        return meta

    def _training_set(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        """Table 1's training set (scaled), made once per recipe and cached. Only making it
        touches the surrogates (frozen meanwhile): a cached set trains no classifier."""

        def make() -> dict[str, torch.Tensor]:
            with _frozen_classifiers(ctx):
                return make_training_set(ctx)

        return ctx.cache.memo_tensors("hgd-trainsets", f"{ctx.info.name}-hgd", _recipe_key(ctx),
                                      make)

    def training_loss(self, ctx: FitContext) -> float:
        """This variant's mean loss over the whole training set ``fit`` trains on (held-out part
        included), in the module's current mode: what ``fit`` lowers."""
        with frozen(ctx.classifier):
            data = self._training_set(ctx)  # made with gradients (attacks) on a cache miss
            idx = torch.arange(len(data["src"]))
            with torch.no_grad():
                total = sum(float(self._batch_loss(ctx, data, idx[b]).sum())
                            for b in batches(len(idx), 500))
        return total / max(1, len(idx))

    def _train(self, ctx: FitContext, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        start = time.perf_counter()
        self.net = self._build_net().to(ctx.device)  # initialised under fit_or_load's seed
        gen = torch.Generator().manual_seed(ctx.seed)
        n_clean = len(data["y"])
        val_clean = torch.randperm(n_clean, generator=gen)[: max(1, n_clean // 10)]
        is_val = torch.isin(data["src"], val_clean)
        train_idx, val_idx = (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
        epochs = self._epochs(len(train_idx))
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=1,
                                                           min_lr=self.lr / 10)
        best, best_state, history = math.inf, copy.deepcopy(self.net.state_dict()), []
        bar = progress(total=epochs * math.ceil(len(train_idx) / self.batch_size),
                       desc=f"fit {registered_name(self)} on {ctx.info.name}")
        for _ in range(epochs):
            self.net.train()
            for idx in batches(len(train_idx), self.batch_size, gen, shuffle=True):
                loss = self._batch_loss(ctx, data, train_idx[idx]).mean()
                check_finite(loss, "HGD training loss")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", val=f"{best:.4f}")
            val = self.validation_loss(ctx, data, val_idx)
            history.append(round(val, 6))
            sched.step(val)
            if val < best:
                best, best_state = val, copy.deepcopy(self.net.state_dict())
        bar.close()
        self.net.load_state_dict(best_state)
        self.net.eval()
        return {"best_val_loss": best, "val_history": history, "epochs": epochs,
                "train_size": len(train_idx), "val_size": len(val_idx), "loss": self.loss,
                "widths": list(self.widths), "feedback_widths": list(self.feedback_widths),
                "final_lr": opt.param_groups[0]["lr"], "fit_seconds": time.perf_counter() - start,
                "scaled_from_paper": self._scale_note(epochs)}

    def _batch_loss(self, ctx: FitContext, data: dict[str, torch.Tensor],
                    idx: torch.Tensor) -> torch.Tensor:
        src = data["src"][idx]
        x_adv, x = ctx.on_device(data["x_adv"][idx]), ctx.on_device(data["x"][src])
        y = ctx.on_device(data["y"][src])
        return self.guided_loss(ctx.classifier, self(x_adv), x, y)

    @torch.no_grad()
    def validation_loss(self, ctx: FitContext, data: dict[str, torch.Tensor],
                        idx: torch.Tensor) -> float:
        """Mean loss of this variant (eval mode) over the samples ``idx`` of ``data``."""
        self.net.eval()
        total = sum(float(self._batch_loss(ctx, data, idx[b]).sum())
                    for b in batches(len(idx), 500))
        return total / max(1, len(idx))

    def _scale_note(self, epochs: int | None = None) -> str:
        size = min(self.input_shape[1:])
        epochs_text = epochs or self.epochs or f"round({IMAGE_BUDGET}/train images) in [2,30]"
        lr_text = "" if self.lr == PAPER_LR else f"; lr {self.lr:g} (paper {PAPER_LR:g})"
        return (f"widths x{self.widths[0] / PAPER_FORWARD[0]:g} of the paper's (default "
                f"x{width_multiplier(size):g} at {size} px); {epochs_text} epochs (paper 20-30); "
                f"fit_images clean images x 6 attacks (paper 30K x 7 on ImageNet); eps "
                f"k/16*eps_max, k in 1..16{lr_text}")

    def metadata(self) -> dict[str, Any]:
        """Settings and what was scaled down from the paper, for every result row (the same
        whether trained or loaded; ``fit``'s metadata holds the resolved epochs)."""
        return {"loss": self.loss, "lateral": self.lateral, "noise_scale": self.noise_scale,
                "widths": list(self.widths), "feedback_widths": list(self.feedback_widths),
                "epochs": self.epochs or "auto", "scaled_from_paper": self._scale_note()}


def _frozen_classifiers(ctx: FitContext) -> contextlib.ExitStack:
    """The target and the surrogates frozen (eval mode, no weight gradients) until exit."""
    stack = contextlib.ExitStack()
    for m in [ctx.classifier, *ctx.surrogates]:
        stack.enter_context(frozen(m))
    return stack


def _recipe_key(ctx: FitContext) -> dict[str, Any]:
    return {"recipe": RECIPE, "eps_levels": EPS_LEVELS, "eps_max": ctx.info.eps_max,
            "context": ctx.key, "seed": ctx.seed, "n": ctx.budget,
            "dataset": ctx.info.name}
