"""Bit-depth reduction: feature squeezing's colour-depth squeezer.

Paper: Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", NDSS 2018 (https://arxiv.org/abs/1704.01155). Each pixel value x in [0,1] becomes
``rint(x * (2^bits - 1)) / (2^bits - 1)``, exactly their reference ``reduce_precision_np``
(EvadeML-Zoo), so the output takes exactly ``2^bits`` values. Guo et al. (ICLR 2018) use the same
transform as an input-transformation defense.

Default ``bits`` (the paper's per dataset; a defense knows only the input shape): 1 for 1-channel
images (MNIST), 5 for colour images up to 64 px (CIFAR-10), 4 for larger colour images (ImageNet).
The paper used the squeezer to *detect* adversarial inputs by comparing predictions; here, as in
its robustness tables and in Guo et al., the squeezed image is what the classifier sees. Nothing
is trained and nothing was scaled down.

Rounding has a zero gradient almost everywhere, so the defense declares
``differentiable = False``: under ``--threat whitebox`` the attacker gets BPDA with the identity as
the backward pass (Athalye et al., ICML 2018), and the row records ``bpda = True``.

Example: ``python -m bench run --defense bitdepth --attack pgd40 --defense-opt bitdepth.bits=2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench.config import int_option
from bench.defense import Defense
from bench.registry import register_defense


def paper_bits(input_shape: Sequence[int]) -> int:
    """Xu et al.'s bit depth for inputs of ``input_shape`` (C x H x W): MNIST 1, CIFAR-10 5,
    ImageNet 4."""
    if input_shape[0] == 1:
        return 1
    return 5 if min(input_shape[1:]) <= 64 else 4


def reduce_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``rint(x * (2^bits - 1)) / (2^bits - 1)`` for ``x`` in [0,1] (any shape); 2^bits levels."""
    top = float(2 ** bits - 1)
    return torch.round(x.clamp(0.0, 1.0) * top) / top


@register_defense("bitdepth")
class BitDepth(Defense):
    """Bit-depth reduction to 2^bits levels (Xu et al., NDSS 2018 feature squeezing).

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        bits: bits per pixel value, 1..8 (default None: the paper's for the input shape, 1 for
            grey images, 5 for colour up to 64 px, 4 for larger colour images).

    Example: ``python -m bench run --defense bitdepth --attack fgsm --defense-opt bits=4``
    """

    differentiable = False

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 bits: int | None = None) -> None:
        super().__init__(input_shape, num_classes)
        if bits is None:
            bits = paper_bits(self.input_shape)
        self.bits = int_option("bitdepth", "bits", bits, 1, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N x C x H x W in [0,1]) quantized to ``2^bits`` levels; same shape and range."""
        return reduce_bits(x, self.bits)

    def metadata(self) -> dict[str, Any]:
        return {"bits": self.bits, "levels": 2 ** self.bits,
                "paper_default_bits": paper_bits(self.input_shape), "bpda_surrogate": "identity"}
