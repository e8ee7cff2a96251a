"""GCLN: a generative cleaning network with a quantized nonlinear transform, trained as a GAN.

Paper: "Generative Cleaning Networks with Quantized Nonlinear Transform for Deep Neural Network
Defense", anonymous ICLR 2020 submission (OpenReview). The generator G first applies the
quantized nonlinear transform (QNT, :mod:`._dct`: 8x8 block DCT, ``Round(X/q)*q`` with the
step Qs on the 0-255 scale, inverse DCT) "to destroy the noise pattern", then recovers "the image
content damaged during this nonlinear transform"; its output goes to the fixed target classifier.
A detector D (clean vs attacked) is trained against G, GAN style (section 3.3).

Where the paper is silent (no architecture, optimizer or epochs are given) we chose the networks of
:mod:`._nets` (G = QNT then a residual recovery net, ``clamp(t + R(t), 0, 1)`` with
``t = QNT(x)``; D = a DCGAN-style conv net) and Adam lr 2e-4, betas (0.5, 0.999) for both.

Training (section 3.3): the ``fit_images`` training images are attacked once by PGD on the frozen
target (the paper's CIFAR-10 setting: 10 steps of eps/8 from a random start; eps = the dataset's
default, 8/255 on CIFAR-10 as in the paper, 0.2 on MNIST; cached and shared by every Qs). D is
first trained on clean vs attacked images (``warmup_epochs``, "the initial phase"), then jointly
(eq. 6): D on images drawn from the clean pool vs G(x*); G on ``L_G = lam*L_P + (1-lam)*L_A``
(lam 0.5), ``L_P`` = mean squared difference of VGG-19 features (relu2_2, index 8: Johnson et al.'s
feature loss, which the paper cites for L_P) of G(x*) and of the clean x, ``L_A`` = cross-entropy
of D(G(x*)) against "clean". Recovered images the target classifies correctly join the clean pool
on the fly (the newest ``fit_images`` of them are kept). The loss network is VGG-19 with ImageNet
weights when they are in the local torch cache, else the offline substitute of
:mod:`bench.defenses._lossnet` (fixed random He-initialised weights,
``vgg19-random-kaiming-seed0``); which one is recorded in every result row and in the cache key; it
is never part of the weights.

Gradients: rounding is non-differentiable, so the defense declares ``differentiable = False`` (the
whitebox row records BPDA) and its ``attack_forward`` is G itself with the straight-through
estimator in the rounding (the same values as ``forward``), as in training.

Scaled down from the paper (recorded in every result row): the paper states no epochs; ours
default to round(3000 / training images) within [1, 30]: 1 epoch on MNIST's 10,000 images (about
150 CPU-seconds measured single-threaded, a third of it for the PGD set), 2 on digits. Pass e.g.
``--defense-opt epochs=30`` for a longer run, ``--fit-images`` for more images.

Variants: ``gcln-q5`` (Qs 5) and ``gcln-q10`` (Qs 10). The Qs sweep is the ``qs`` option (one
model per value, e.g. ``--defense-opt qs=20``). Example:
``python -m bench run --dataset mnist --defense gcln-q10 --attack fgsm --eps 0.2 --n 300``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import frozen
from bench.defense import Defense, FitContext
from bench.defenses._lossnet import feature_extractor, resolve_source
from bench.defenses.gcln._nets import CleanPool, Generator, detector
from bench.errors import ConfigError
from bench.registry import ATTACKS, register_defense, registered_name
from bench.runtime import batches, check_finite, progress
from bench.seeds import batch_seed

LOSSNET_ARCH, VGG19_MODULES = "vgg19", 37  # len(torchvision vgg19().features)
IMAGE_BUDGET = 3000  # default epochs = round(IMAGE_BUDGET / training images), in [1, 30]
TRAIN_ATTACK = "pgd10"  # the registered PGD (random start); its steps are set by attack_steps


def _positive(**values: Any) -> None:
    bad = {k: v for k, v in values.items()
           if v is not None and not (isinstance(v, int | float) and v > 0)}
    if bad:
        raise ConfigError(f"GCLN options {bad} must be numbers > 0 (e.g. qs=10 lr=0.0002).")


def _parse_layers(value: str | Sequence[int]) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        layers = tuple(int(i) for i in items)
    except (TypeError, ValueError):
        layers = ()
    if not layers or min(layers) < 0 or max(layers) >= VGG19_MODULES:
        raise ConfigError(f"GCLN loss_layers={value!r}: give indices into vgg19.features, 0.."
                          f"{VGG19_MODULES - 1} (e.g. 8 = relu2_2, or 3,8,17).")
    return layers


@register_defense("gcln-q5", qs=5.0, description="GCLN generative cleaning network, Qs = 5")
@register_defense("gcln-q10", qs=10.0, description="GCLN generative cleaning network, Qs = 10")
class GCLN(Defense):
    """GCLN (ICLR 2020 submission): quantized-DCT generator trained against a detector.

    Example: ``python -m bench run --dataset mnist --defense gcln-q10 --attack pgd100 --eps 0.2``.

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        qs: quantization step on the 0-255 scale (variants: 5, 10; any value > 0 for a sweep).
        block: DCT block size M (8). blocks: residual blocks in the generator (2).
        width: generator width (default 32 for 1 channel, 64 for colour); D uses half of it.
        lam: weight of the perceptual loss in L_G (0.5, the paper's lambda).
        epochs: joint training epochs (default round(3000 / training images) in [1, 30]).
        warmup_epochs: detector-only epochs on clean vs attacked images first (1).
        batch_size: training batch (64). lr: Adam learning rate of G and D (2e-4).
        attack_steps, attack_eps, attack_alpha: the PGD training attack (10 steps; the dataset's
            default eps; step eps / 8).
        lossnet: loss-network weights: ``auto``, ``imagenet`` or ``random`` (the substitute).
        loss_layers: VGG-19 ``features`` indices compared by L_P (``8``: relu2_2).
    """

    differentiable = False
    needs_training = True
    min_size = 8

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 qs: float = 10.0, block: int = 8, width: int | None = None, blocks: int = 2,
                 lam: float = 0.5, epochs: int | None = None, warmup_epochs: int = 1,
                 batch_size: int = 64, lr: float = 2e-4, attack_steps: int = 10,
                 attack_eps: float | None = None, attack_alpha: float | None = None,
                 lossnet: str = "auto", loss_layers: str | Sequence[int] = "8") -> None:
        super().__init__(input_shape, num_classes)
        _positive(qs=qs, block=block, width=width, blocks=blocks, epochs=epochs,
                  batch_size=batch_size, lr=lr, attack_steps=attack_steps, attack_eps=attack_eps,
                  attack_alpha=attack_alpha)
        if not (isinstance(lam, int | float) and 0 <= lam <= 1) or int(warmup_epochs) < 0:
            raise ConfigError(f"GCLN lam={lam}, warmup_epochs={warmup_epochs}: lam must be in "
                              f"[0, 1] and warmup_epochs >= 0 (e.g. lam=0.5 warmup_epochs=1).")
        c = self.input_shape[0]
        self.qs, self.lam, self.width = float(qs), float(lam), int(width or (32 if c == 1 else 64))
        self.epochs, self.warmup_epochs = epochs, int(warmup_epochs)
        self.batch_size, self.lr, self.lossnet = int(batch_size), float(lr), lossnet
        self.attack = {"steps": int(attack_steps), "eps": attack_eps, "alpha": attack_alpha}
        self.loss_layers = _parse_layers(loss_layers)
        resolve_source(LOSSNET_ARCH, lossnet)  # a bad name or missing ImageNet file fails here
        self.generator = Generator(c, self.width, int(blocks), self.qs, int(block))
        self.detector = detector(c, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Recovered images G(x): N x C x H x W in [0,1], the shape of ``x``."""
        return self.generator(x)

    def attack_forward(self, x: torch.Tensor) -> torch.Tensor:
        """G with the straight-through gradient in the rounding (values equal ``forward``)."""
        return self.generator(x)

    @property
    def lossnet_source(self) -> str:
        """Which VGG-19 weights L_P uses (``vgg19-imagenet`` or the offline substitute)."""
        return resolve_source(LOSSNET_ARCH, self.lossnet)

    def cache_key(self) -> dict[str, Any]:
        return {**super().cache_key(), "lossnet": self.lossnet_source}

    # -- training -----------------------------------------------------------------------------
    def generator_loss(self, x_hat: torch.Tensor, x: torch.Tensor,
                       lossnet: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_G = lam * L_P + (1 - lam) * L_A`` for recovered ``x_hat`` and clean ``x``."""
        with torch.no_grad():
            target = lossnet(x)
        lp = sum(F.mse_loss(a, b) for a, b in zip(lossnet(x_hat), target, strict=True))
        logits = self.detector(x_hat)
        la = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return self.lam * lp + (1 - self.lam) * la, {"L_P": lp.item(), "L_A": la.item()}

    def _attack_params(self, ctx: FitContext) -> dict[str, Any]:
        eps = float(self.attack["eps"] or ctx.info.default_eps)
        return {"attack": TRAIN_ATTACK, "steps": self.attack["steps"], "eps": eps,
                "alpha": float(self.attack["alpha"] or eps / 8)}

    def _attacked_set(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        p = self._attack_params(ctx)
        atk = ATTACKS.build(p["attack"], eps=p["eps"], alpha=p["alpha"], steps=p["steps"],
                            seed=ctx.seed)
        x, y = ctx.train_tensors()
        adv = [atk(ctx.classifier, ctx.on_device(x[i]), ctx.on_device(y[i]),
                   seed=batch_seed(ctx.seed, k)).cpu()
               for k, i in enumerate(progress(list(batches(len(x), 500)), desc="GCLN PGD set"))]
        return {"x": x, "x_adv": torch.cat(adv), "y": y}

    def _epochs(self, n: int) -> int:
        return int(self.epochs or min(30, max(1, round(IMAGE_BUDGET / max(1, n)))))

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Train D and G with the recipe of the module docstring; return metadata."""
        start = time.perf_counter()
        lossnet = feature_extractor(LOSSNET_ARCH, self.loss_layers, weights=self.lossnet)
        with frozen(ctx.classifier):
            meta = self._train(ctx, self._training_set(ctx), lossnet)
        return {**meta, "fit_seconds": round(time.perf_counter() - start, 1),
                "train_attack": self._attack_params(ctx), "lossnet": lossnet.source}

    def _training_set(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        """The PGD-attacked training images (cached, shared by every Qs); call it with the
        classifier frozen."""
        key = {**self._attack_params(ctx), "context": ctx.key, "seed": ctx.seed, "n": ctx.budget}
        return ctx.cache.memo_tensors("gcln-trainsets", f"{ctx.info.name}-gcln", key,
                                      lambda: self._attacked_set(ctx))

    def training_loss(self, ctx: FitContext) -> float:
        """G's perceptual term L_P on the attacked training set, in the module's current mode:
        what ``fit`` lowers. (L_A is a game against D, which ``fit`` trains too: no measure of
        progress.)"""
        lossnet = feature_extractor(LOSSNET_ARCH, self.loss_layers, weights=self.lossnet)
        with frozen(ctx.classifier):
            data = self._training_set(ctx)  # made with gradients (PGD) on a cache miss
        total = 0.0
        with torch.no_grad():
            for idx in batches(len(data["x"]), 500):
                x_hat = self.generator(ctx.on_device(data["x_adv"][idx]))
                parts = self.generator_loss(x_hat, ctx.on_device(data["x"][idx]), lossnet)[1]
                total += parts["L_P"] * len(idx)
        return total / max(1, len(data["x"]))

    def _train(self, ctx: FitContext, data: dict[str, torch.Tensor],
               lossnet: nn.Module) -> dict[str, Any]:
        x, x_adv, y, dev = data["x"], data["x_adv"], data["y"], ctx.device
        gen, pool = torch.Generator().manual_seed(ctx.seed), CleanPool(x)
        opt_g = torch.optim.Adam(self.generator.parameters(), self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.detector.parameters(), self.lr, betas=(0.5, 0.999))
        epochs, steps = self._epochs(len(x)), -(-len(x) // self.batch_size)
        bar = progress(total=(self.warmup_epochs + epochs) * steps,
                       desc=f"fit {registered_name(self)} on {ctx.info.name}")
        self.train()
        for _ in range(self.warmup_epochs):  # D alone: clean vs attacked images
            for idx in batches(len(x), self.batch_size, gen, shuffle=True):
                self._detector_step(opt_d, x[idx].to(dev), x_adv[idx].to(dev))
                bar.update(1)
        parts: dict[str, float] = {}
        for _ in range(epochs):
            for idx in batches(len(x), self.batch_size, gen, shuffle=True):
                x_hat = self.generator(x_adv[idx].to(dev))
                d_loss = self._detector_step(opt_d, pool.sample(len(idx), gen).to(dev), x_hat)
                g_loss, parts = self.generator_loss(x_hat, x[idx].to(dev), lossnet)
                check_finite(g_loss, "GCLN generator loss")
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                with torch.no_grad():
                    pool.add(x_hat, ctx.classifier(x_hat).argmax(1).cpu() == y[idx])
                bar.update(1)
                bar.set_postfix(L_G=f"{g_loss.item():.3f}", L_D=f"{d_loss:.3f}")
        bar.close()
        self.eval()
        return {"epochs": epochs, "warmup_epochs": self.warmup_epochs, "train_images": len(x),
                "final_losses": parts, "pool_added": pool.added,
                "scaled_from_paper": self._scale_note(epochs)}

    def _detector_step(self, opt: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor) -> float:
        """One step of D on eq. 6: ``real`` labelled clean (1), ``fake`` attacked (0)."""
        lr, lf = self.detector(real), self.detector(fake.detach())
        loss = 0.5 * (F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                      + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))
        check_finite(loss, "GCLN detector loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def _scale_note(self, epochs: int | None = None) -> str:
        return (f"{epochs or self.epochs or f'round({IMAGE_BUDGET}/train images) in [1,30]'} "
                f"epochs (paper: not stated); fit_images training images; architecture, "
                f"optimizer and VGG-19 layer our choice (paper: not stated)")

    def metadata(self) -> dict[str, Any]:
        """Settings, the loss network's source and what was scaled, for every result row."""
        return {"qs": self.qs, "block": self.generator.qnt.block, "width": self.width,
                "lam": self.lam, "lossnet": self.lossnet_source,
                "loss_layers": list(self.loss_layers), "epochs": self.epochs or "auto",
                "train_attack": {"attack": TRAIN_ATTACK, "steps": self.attack["steps"],
                                 "eps": self.attack["eps"] or "dataset default_eps",
                                 "alpha": self.attack["alpha"] or "eps/8"},
                "scaled_from_paper": self._scale_note()}
