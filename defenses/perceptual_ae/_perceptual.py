"""Parts of the perceptual-loss denoising AE (:mod:`.perceptual_ae`): the network, the
loss of Eq. 4, the grayscale 28x28 conversion and the adversarial training set.

Autoencoder (section 4.2, Figure 4), 28x28x1 -> 2x2x8 -> 28x28x1, sizes checked in the tests:
conv3x3 s3 p1 1->16 (10x10), ReLU, maxpool 2/2 (5x5); conv3x3 s2 p1 16->8 (3x3), ReLU, maxpool
2/1 (2x2x8). Decoder: ConvTranspose k3 s2 p0 8->16 (5x5), ReLU; ConvTranspose k5 s3 p1 16->8
(15x15), ReLU; ConvTranspose k2 s2 p1 8->1 (28x28), then the paper's "inverse tangent": the
net outputs ``atan(z)`` in (-pi/2, pi/2) and is trained on it, unclamped, as the paper's; the
defense returns ``clamp(atan(z), 0, 1)`` (the clamp is ours: the contract requires [0,1]). Pixels
0 and 1 are reached at z = 0 and z = tan(1); a squashing into [0,1] such as 0.5 + atan(z)/pi
would need z = -10 for a 0.03 background, far for 1e-3 Adam steps.

Loss (Eq. 4): ``sum_i MSE(F_i(x), F_i(x_d)) + MSE(x, x_d)`` for the clean ``x`` and the denoised
adversarial ``x_d``: each squared error weighted by 1/numel of its map, computed from the actual
maps: 1/2048, 1/4096, 1/8192 and 1/784 = the paper's 0.00048, 0.00024, 0.00012, 0.0013.

Which VGG-16 maps: the paper's "n layers from the end" fits no VGG-16 (the 3rd, 7th and 10th
weight layers from the end are fc6, conv4_3 and conv3_3: 512 and 256 channels where the paper
has 256 and 128), so the default follows Figure 5's caption and the stated shapes: F3 = "the last
red layer before the max-pooling", F7 = "the second green layer", F10 = "the second purple
layer", i.e. relu4_3, relu3_2, relu2_2 (``features[22, 13, 8]``), which are 2x2x512, 4x4x256 and
8x8x128 exactly when the loss network sees 16x16 images (at 28 px: 3x3, 7x7, 14x14); images are
resized (bilinear, antialiased) to 16 px for the loss network only. The other exact reading, 32
px (28 upsampled) with pool2, pool3 and relu5_3 (``loss_layers=29,16,9 loss_size=32``), makes two
maps pooling outputs, against the caption, and costs ~2.4x more per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import frozen
from bench.defense import FitContext
from bench.registry import ATTACKS
from bench.runtime import batches, progress

AE_SHAPE = (1, 28, 28)
PAPER_LAYERS = (22, 13, 8)  # F3, F7, F10: relu4_3 2x2x512, relu3_2 4x4x256, relu2_2 8x8x128
LOSS_SIZE = 16  # the loss network's input size at which those maps have the paper's shapes
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


class ConvAutoencoder(nn.Module):
    """The paper's AE (Figure 4): N x 1 x 28 x 28 in [0,1] -> code N x 8 x 2 x 2 -> same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2, 1))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(8, 16, 3, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 5, stride=3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 2, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``atan(z)``, in (-pi/2, pi/2) (the paper's last activation)."""
        return torch.atan(self.decoder(self.encoder(x)))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < min(x.shape[-2:]))


def perceptual_loss(lossnet: nn.Module, x_d: torch.Tensor, x: torch.Tensor,
                    loss_size: int = LOSS_SIZE) -> tuple[torch.Tensor, list[float]]:
    """Eq. 4 per image (N) for denoised ``x_d`` and clean ``x`` (both N x 1 x 28 x 28): the MSE
    of every feature map (images resized to ``loss_size``) and of the pixels. Also returns the
    weights 1/numel that this amounts to (feature maps, then pixels)."""
    with torch.no_grad():
        target = lossnet(_resize(x, loss_size))
    terms = [(a - b).pow(2).flatten(1).mean(1)
             for a, b in zip(lossnet(_resize(x_d, loss_size)), target, strict=True)]
    terms.append((x_d - x).pow(2).flatten(1).mean(1))
    weights = [1.0 / t[0].numel() for t in target] + [1.0 / x[0].numel()]
    return torch.stack(terms).sum(0), weights


def to_gray28(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W in [0,1] -> N x 1 x 28 x 28: luma, then bilinear (antialiased) resizing."""
    if x.shape[1] == 3:
        x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return _resize(x, AE_SHAPE[1]).clamp(0.0, 1.0)


def from_gray28(z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """N x 1 x 28 x 28 -> N x C x H x W (``shape`` = C, H, W): bilinear, channels replicated."""
    if tuple(z.shape[-2:]) != tuple(shape[1:]):
        z = F.interpolate(z, size=tuple(shape[1:]), mode="bilinear", align_corners=False)
    return z.expand(-1, shape[0], -1, -1).contiguous()


def adversarial_set(ctx: FitContext, n: int, eps: float, attacks: Sequence[str],
                    pgd_steps: int) -> dict[str, torch.Tensor]:
    """Clean ``x`` (n images) and ``x_adv`` (n per attack, grouped by attack, in ``attacks``
    order): untargeted FGSM and PGD (random start, step eps/2, ``pgd_steps`` iterations) against
    the frozen target, as the paper's section 3.2. Memoized in the cache."""
    key = {"context": ctx.key, "seed": ctx.seed, "n": n, "eps": eps, "attacks": list(attacks),
           "pgd_steps": pgd_steps, "pgd_alpha": eps / 2}

    def make() -> dict[str, torch.Tensor]:
        x, y = ctx.train_tensors(n)
        made = {"fgsm": ATTACKS.build("fgsm", eps=eps, seed=ctx.seed),
                "pgd": ATTACKS.build("pgd100", eps=eps, alpha=eps / 2, steps=pgd_steps,
                                     seed=ctx.seed)}
        adv = []
        with frozen(ctx.classifier):
            for name in attacks:
                for i, idx in enumerate(progress(list(batches(n, 500)), desc=f"{name} set")):
                    adv.append(made[name](ctx.classifier, ctx.on_device(x[idx]),
                                          ctx.on_device(y[idx]), seed=ctx.seed * 1009 + i).cpu())
        return {"x": x, "x_adv": torch.cat(adv)}

    return ctx.cache.memo_tensors("perceptual-ae-sets", f"{ctx.info.name}-adv", key, make)
