"""Median smoothing: feature squeezing's local spatial smoothing squeezer.

Paper: Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", NDSS 2018 (https://arxiv.org/abs/1704.01155). Each channel is replaced by its
``kernel x kernel`` sliding-window median, computed exactly as their reference
(EvadeML-Zoo's ``median_filter_np``: ``scipy.ndimage.median_filter(x, size=(1, k, k, 1),
mode='reflect')``), reproduced here in torch so it runs on the model's device:

* borders: scipy's ``reflect`` mode, i.e. the edge pixel is repeated (``d c b a | a b c d``);
* window of output pixel i: input pixels i - k//2 .. i + (k-1) - k//2 on each axis, so an even
  kernel (2x2) reaches one pixel up and left, not down and right;
* the median of an even count is the upper one (sorted index k*k//2), as scipy takes it.

Default ``kernel`` (the paper's per dataset; a defense knows only the input shape): 2 (2x2) for
images up to 64 px (MNIST, CIFAR-10), 3 (3x3) for larger ones (ImageNet). As for ``bitdepth``,
the paper used squeezers to detect attacks; here the smoothed image is what the classifier sees.
Nothing is trained and nothing was scaled down.

A median routes each output's gradient to one selected input pixel (none to the others), a
degenerate, piecewise signal, so the defense declares ``differentiable = False``: under
``--threat whitebox`` the attacker gets BPDA with the identity as the backward pass
(Athalye et al., ICML 2018), and the row records ``bpda = True``.

Example: ``python -m bench run --defense median --attack pgd40 --defense-opt median.kernel=3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import int_option
from bench.defense import Defense
from bench.registry import register_defense


def paper_kernel(input_shape: Sequence[int]) -> int:
    """Xu et al.'s median window for inputs of ``input_shape`` (C x H x W): 2 up to 64 px
    (MNIST, CIFAR-10), else 3 (ImageNet)."""
    return 2 if min(input_shape[1:]) <= 64 else 3


def reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices into an axis of length ``n`` padded by ``before``/``after`` in scipy's
    ``reflect`` mode (edge repeated, periodic with period 2n for any pad width)."""
    idx = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(idx < n, idx, 2 * n - 1 - idx)


def median_filter(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-channel ``kernel x kernel`` median of ``x`` (N x C x H x W), as
    ``scipy.ndimage.median_filter(x, size=(1, 1, kernel, kernel), mode='reflect')``."""
    if kernel == 1 or x.numel() == 0:
        return x.clone()
    n, c, h, w = x.shape
    before, after = kernel // 2, kernel - 1 - kernel // 2
    rows = reflect_index(h, before, after, x.device)
    cols = reflect_index(w, before, after, x.device)
    padded = x[:, :, rows][:, :, :, cols].reshape(n * c, 1, h + kernel - 1, w + kernel - 1)
    windows = F.unfold(padded, kernel)  # (N*C) x k*k x H*W
    med = windows.kthvalue(kernel * kernel // 2 + 1, dim=1).values
    return med.reshape(n, c, h, w)


@register_defense("median")
class MedianSmoothing(Defense):
    """Median smoothing over a kernel x kernel window (Xu et al., NDSS 2018 feature squeezing).

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        kernel: window side in pixels, >= 1 (default None: the paper's for the input shape, 2 up
            to 64 px, 3 for larger images; 1 is the identity).

    Example: ``python -m bench run --defense median --attack fgsm --defense-opt kernel=3``
    """

    differentiable = False

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 kernel: int | None = None) -> None:
        super().__init__(input_shape, num_classes)
        if kernel is None:
            kernel = paper_kernel(self.input_shape)
        self.kernel = int_option("median", "kernel", kernel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Median-smoothed ``x`` (N x C x H x W in [0,1]); same shape and range."""
        return median_filter(x, self.kernel)

    def metadata(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "paper_default_kernel": paper_kernel(self.input_shape),
                "padding": "scipy reflect (edge repeated)", "bpda_surrogate": "identity"}
