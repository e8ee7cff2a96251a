"""The embedded ``digits`` dataset: scikit-learn's real 8x8 handwritten digits, resized to 28x28."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from bench.data.base import (
    BenchDataset,
)
from bench.registry import register_dataset


@lru_cache(maxsize=4)
def _resized(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images resized to ``size`` (N x 1 x H x W in [0,1]) and their labels, computed
    once per process: a run reads the splits a dozen times (slice, training sets, probes)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x, torch.tensor(raw.target, dtype=torch.long)


@register_dataset("digits")
class Digits(BenchDataset):
    """scikit-learn's real 8x8 handwritten digits resized to 28x28 (embedded; no files)."""

    input_shape = (1, 28, 28)
    eps_max = 0.3
    default_eps = 0.2
    models = ("cnn", "cnn3x3")
    # A recipe sized to 1,437 training images of 8x8 digits (the quickstart's): a third of them
    # for a defense's training set, and the trainable defenses that follow a dataset's recipe
    # (HGD's family) train 3 epochs at lr 3e-3: half the steps of the MNIST-sized defaults for
    # the same oblivious accuracy of LGD (82-90% under PGD-100). Part of every weight key and row.
    fit_images = 480
    fit_recipe = {"epochs": 3, "lr": 3e-3}
    n_test = 360

    def _load(self, split: str) -> Dataset:
        x, y = _resized(tuple(self.input_shape[1:]))
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        idx = order[: len(y) - self.n_test] if split == "train" else order[len(y) - self.n_test:]
        return TensorDataset(x[idx].contiguous(), y[idx].contiguous())  # copies: callers own them
