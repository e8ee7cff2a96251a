"""The embedded ``digits`` dataset: scikit-learn's real 8x8 handwritten digits, resized to 28x28."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from bench.data.base import (
    BenchDataset,
)
from bench.registry import register_dataset


@register_dataset("digits")
class Digits(BenchDataset):
    """scikit-learn's real 8x8 handwritten digits resized to 28x28 (embedded; no files)."""

    input_shape = (1, 28, 28)
    eps_max = 0.3
    default_eps = 0.2
    models = ("cnn", "cnn3x3")
    fit_images = 1437
    n_test = 360

    def _load(self, split: str) -> Dataset:
        from sklearn.datasets import load_digits

        raw = load_digits()
        x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=self.input_shape[1:], mode="bilinear", align_corners=False)
        x = x.clamp(0.0, 1.0)
        y = torch.tensor(raw.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        idx = order[: len(y) - self.n_test] if split == "train" else order[len(y) - self.n_test:]
        return TensorDataset(x[idx].contiguous(), y[idx].contiguous())
