"""Tiny data and models the contract kit runs on: seconds on a CPU, no files, no network.

* :class:`TinyNet`: a small differentiable classifier (one conv layer, a linear head) with
  ``forward_features``/``forward_head``, for 1x28x28 or 3x32x32 inputs.
* :func:`tiny_dataset`: the embedded digits (:class:`bench.data.Digits`) with a training budget of
  :data:`FIT_IMAGES` images, as 1x28x28 or, for a plugin that needs colour, 3x32x32.
* :func:`trained_tiny_net`: a :class:`TinyNet` trained on those digits (about 85% accurate, one
  second): the classifier a defense is fitted against, so that a loss through it means something.
* :func:`train_logistic`: a logistic regression at 100% on separable 1x8x8 images, the model an
  attack must fool.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from bench.data import Digits

#: The input shapes the kit can test a defense on, in the order it tries them.
SHAPES: tuple[tuple[int, int, int], ...] = ((1, 28, 28), (3, 32, 32))
FIT_IMAGES = 48  # a defense's training budget in the kit (FitContext.budget)


class TinyNet(nn.Module):
    """A small differentiable classifier for contract tests (1x28x28 or 3x32x32 inputs).

    Args:
        channels: input channels. size: unused (kept for callers that pass it); any H x W works.
        num_classes: number of logits.
    """

    def __init__(self, channels: int = 1, size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N x num_classes) for images ``x`` (N x C x H x W in [0,1])."""
        return self.head(self.features(x))


class TinyDigits(Digits):
    """The embedded digits with a training budget of :data:`FIT_IMAGES` images (1x28x28)."""

    fit_images = FIT_IMAGES


class TinyColourDigits(TinyDigits):
    """The same digits as 3x32x32 colour images (grey replicated into three channels)."""

    input_shape = (3, 32, 32)

    def _load(self, split: str) -> Dataset:
        x, y = super()._load(split).tensors
        return TensorDataset(x.expand(-1, 3, -1, -1).contiguous(), y)


def tiny_dataset(shape: Sequence[int]) -> TinyDigits:
    """The kit's digits at ``shape`` (one of :data:`SHAPES`)."""
    for cls in (TinyDigits, TinyColourDigits):
        if tuple(cls.input_shape) == tuple(shape):
            return cls()
    raise ValueError(f"The contract kit has no data of shape {tuple(shape)}; use one of "
                     f"{SHAPES}.")


def trained_tiny_net(dataset: TinyDigits, seed: int = 0, steps: int = 150) -> TinyNet:
    """A :class:`TinyNet` trained by Adam on 512 training images of ``dataset`` (eval mode)."""
    x, y = dataset.tensors("train", 512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TinyNet(x.shape[1], x.shape[-1])
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on images ``x`` (N x C x H x W) and labels ``y`` (N)."""
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train_logistic() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logistic regression trained to 100% on 200 separable 1x8x8 images of 4 classes.

    The classes are close (prototypes in [0.4, 0.6]), so eps=0.05 is enough for a gradient attack
    to flip most labels while random-sign noise of the same size flips none.
    """
    g = torch.Generator().manual_seed(0)
    protos = 0.4 + 0.2 * torch.rand(4, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (200,), generator=g)
    x = (protos[y] + 0.02 * torch.randn(200, 1, 8, 8, generator=g)).clamp(0, 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    for _ in range(150):  # plain full-batch gradient descent
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, grad in zip(model.parameters(), grads, strict=True):
                p -= 2.0 * grad
    return model.eval(), x, y


def budget_options(builder: Any, budget: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``budget`` (generic option names such as ``epochs`` or ``steps``) that
    ``builder``'s constructor takes: how the kit shrinks any plugin without naming it."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in budget.items() if k in params}
