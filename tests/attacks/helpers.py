"""Helpers of the attack tests: accuracy, and a small classifier trained to 100%."""

from __future__ import annotations

import torch
from torch import nn


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
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
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    for _ in range(150):  # plain full-batch gradient descent
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, grad in zip(model.parameters(), grads, strict=True):
                p -= 2.0 * grad
    return model.eval(), x, y
