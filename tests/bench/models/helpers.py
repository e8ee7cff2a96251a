"""Helpers shared by the model tests."""

from __future__ import annotations

import pytest
import torch


def timm_state(arch: str = "resnet18", seed: int = 123) -> dict[str, torch.Tensor]:
    """A state dict of timm's ``arch`` with seeded random weights (skips without timm)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False)
    return {k: v.contiguous() for k, v in net.state_dict().items()}
