"""Random resizing and padding: the randomization defense of Xie et al.

Paper: Xie, Wang, Zhang, Ren and Yuille, "Mitigating Adversarial Effects Through Randomization",
ICLR 2018 (https://arxiv.org/abs/1711.01991), runner-up of the NIPS 2017 defense competition.
A 299 x 299 image is resized (nearest neighbour, as in the authors' released code, whose
``tf.image.resize_images`` NEAREST_NEIGHBOR is torch's ``mode="nearest"``: source pixel
``floor(i * float32(in/out))``) to ``rnd x rnd`` with ``rnd`` uniform in 299..330, then
zero-padded to 331 x 331 with ``w`` zero columns on the left and ``h`` zero rows on top, ``w`` and
``h`` uniform in 0..331-rnd (inclusive, as the paper's 12,528 patterns and the code's
``random.randint``), and classified at 331 px.

Scaled to the input (a classifier here takes a fixed size and a preprocessor returns its input's
shape): for a side of ``s`` px the padded side is ``S = round(s * 331 / 299)`` (31 at 28 px, 35 at
32 px, 331 at 299 px; at least ``s + 1``), ``rnd`` is uniform in ``s..S-1``, the zero padding to
``S`` is at a uniform random offset, and the padded image is resized back from ``S`` to ``s``
(bilinear, ``antialias=False``) for the classifier. At 299 px the result differs from the paper
only by that final resize back (the paper's Inception classifies the 331 px image itself); the
row's metadata says so. Non-square inputs get ``S`` per side; ``rnd`` is drawn for the height and
the width keeps the aspect ratio. Nothing is trained.

Randomness: an independent ``(rnd, h, w)`` per image (the released code draws one per batch and
adds a random flip and a 30-draw ensemble for the competition; the paper's defense is the two
layers), from torch's global RNG on the CPU, so the harness's seeding fixes every draw. Resize and
pad have exact gradients (nearest resize: a sparse one), so ``differentiable = True`` and
``randomized = True``: whitebox gradient attacks average ``--eot`` draws, and evaluation runs
``--eval-draws`` forward passes per image.

Example: ``python -m bench run --defense randomization --attack pgd40 --eot 30``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import int_option
from bench.defense import Defense
from bench.registry import register_defense

PAPER_INPUT, PAPER_PADDED = 299, 331  # Xie et al.: 299 px images padded to 331 px


def paper_pad_to(size: int) -> int:
    """The padded side for an input side of ``size`` px: ``round(size * 331 / 299)``, at least
    ``size + 1`` (31 at 28, 35 at 32, 331 at 299)."""
    return max(round(size * PAPER_PADDED / PAPER_INPUT), size + 1)


def _uniform_below(k: torch.Tensor) -> torch.Tensor:
    """One integer uniform in ``0..k_i-1`` per entry of ``k`` (int64, CPU), from torch's RNG."""
    u = torch.rand(k.shape, dtype=torch.float64)
    return torch.minimum((u * k).floor().long(), k - 1)


def draw_transforms(n: int, size: tuple[int, int], pad: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image of a batch of ``n``: resized height and width, top and left padding.

    Args:
        n: batch size.
        size: input height and width ``(H, W)``.
        pad: padded height and width ``(S_h, S_w)``, each larger than its side.

    Returns:
        ``rnd_h``, ``rnd_w``, ``top``, ``left``: int64 CPU tensors of shape ``(n,)``, drawn from
        torch's global RNG; ``rnd_h`` uniform in ``H..S_h-1``, ``rnd_w`` the same for square
        inputs (else ``rnd_h * W / H`` rounded, within ``W..S_w-1``), ``top`` uniform in
        ``0..S_h-rnd_h``, ``left`` in ``0..S_w-rnd_w``.
    """
    (h, w), (ph, pw) = size, pad
    rnd_h = torch.randint(h, ph, (n,))
    rnd_w = rnd_h if h == w else (rnd_h * w / h).round().long().clamp(w, pw - 1)
    top = _uniform_below(ph - rnd_h + 1)
    left = _uniform_below(pw - rnd_w + 1)
    return rnd_h, rnd_w, top, left


def pad_and_resize(x: torch.Tensor, rnd: int | tuple[int, int], top: int | torch.Tensor,
                   left: int | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The paper's two layers, before the resize back: ``x`` resized (nearest) to ``rnd``, then
    placed at ``(top, left)`` on a zero canvas of ``size``.

    Args:
        x: images, N x C x H x W.
        rnd: resized side, or ``(height, width)``.
        top, left: zero rows above and columns left of the image, one int for all or an (N,)
            tensor; ``top + rnd_h <= size_h`` and ``left + rnd_w <= size_w``.
        size: canvas side, or ``(height, width)``.

    Returns:
        N x C x size_h x size_w, same dtype and device as ``x``; differentiable.
    """
    (rh, rw) = (rnd, rnd) if isinstance(rnd, int) else rnd
    (sh, sw) = (size, size) if isinstance(size, int) else size
    n, c = x.shape[:2]
    dev = x.device
    top = torch.as_tensor(top, dtype=torch.long).reshape(-1).expand(n).to(dev)
    left = torch.as_tensor(left, dtype=torch.long).reshape(-1).expand(n).to(dev)
    resized = F.interpolate(x, size=(rh, rw), mode="nearest")
    rows = top[:, None] + torch.arange(rh, device=dev)  # N x rh
    cols = left[:, None] + torch.arange(rw, device=dev)  # N x rw
    batch = torch.arange(n, device=dev)[:, None, None]
    canvas = x.new_zeros(n, c, sh, sw)
    # advanced indices around a slice: the indexed view is N x rh x rw x C
    canvas[batch, :, rows[:, :, None], cols[:, None, :]] = resized.permute(0, 2, 3, 1)
    return canvas


@register_defense("randomization")
class Randomization(Defense):
    """Random resize and zero padding, resized back (Xie et al., ICLR 2018).

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        pad_to: padded side in px, larger than the input's height and width (default None:
            ``round(s * 331 / 299)`` per side ``s``, the paper's 299 -> 331 scaled: 31 at 28 px,
            35 at 32 px, 331 at 299 px).

    Example: ``python -m bench run --defense randomization --attack fgsm
    --defense-opt randomization.pad_to=34``
    """

    randomized = True
    differentiable = True
    needs_training = False

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 pad_to: int | None = None) -> None:
        super().__init__(input_shape, num_classes)
        h, w = self.input_shape[1:]
        self.pad_to = pad_to if pad_to is None else int_option(
            "randomization", "pad_to", pad_to, max(h, w) + 1)
        self.pad = (paper_pad_to(h), paper_pad_to(w)) if pad_to is None else (self.pad_to,) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N x C x H x W in [0,1]) randomly resized and padded per image, then resized
        back to H x W (bilinear); same shape, dtype and device, in [0,1]."""
        if len(x) == 0:
            return x.clone()
        size = (x.shape[-2], x.shape[-1])
        rnd_h, rnd_w, top, left = draw_transforms(len(x), size, self.pad)
        padded = x.new_zeros(*x.shape[:2], *self.pad)
        pairs = torch.stack([rnd_h, rnd_w], 1)
        for rh, rw in torch.unique(pairs, dim=0).tolist():  # one resize per size drawn
            idx = ((rnd_h == rh) & (rnd_w == rw)).nonzero().squeeze(1)
            dev_idx = idx.to(x.device)
            padded[dev_idx] = pad_and_resize(x[dev_idx], (rh, rw), top[idx], left[idx], self.pad)
        out = F.interpolate(padded, size=size, mode="bilinear", align_corners=False,
                            antialias=False)
        return out.clamp(0.0, 1.0)

    def metadata(self) -> dict[str, Any]:
        (h, w), (ph, pw) = self.input_shape[1:], self.pad
        square = h == w and ph == pw
        return {
            "scaled": f"paper 299->331 px scaled to {h}x{w}->{ph}x{pw}, then resized back to "
                      f"{h}x{w} (bilinear) for the classifier; at 299 px that resize back is "
                      "the only difference from the paper",
            "pad_to": ph if square else [ph, pw],
            "resize_range": [h, ph - 1] if square else [[h, ph - 1], [w, pw - 1]],
            "resize": "nearest", "resize_back": "bilinear",
            "draws": "per image", "pad_to_option": self.pad_to,
        }
