"""Attack-test fixtures: linear models with known gradients, a trained one, one thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from tests.attacks.helpers import accuracy, train_logistic


@pytest.fixture
def linear2() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 2-class linear model on 1x8x8 images with a batch of 16 (x in [0,1], labels).

    With two classes the cross-entropy gradient w.r.t. x is ``(p_1 - [y=1]) (w_1 - w_0)``: its
    sign is ``-+sign(w_1 - w_0)`` everywhere, so iterated signed steps add up like one FGSM step.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g)


@pytest.fixture
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """:func:`train_logistic`'s model (100% accurate), images and labels."""
    model, x, y = train_logistic()
    assert accuracy(model, x, y) == 1.0
    return model, x, y


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The attack tests' tensors are tiny: one intra-op thread is several times faster than two
    (no thread hand-offs), and far faster on a busy machine. Restored after each test."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
