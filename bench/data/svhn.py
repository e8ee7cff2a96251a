"""SVHN in torchvision's .mat layout; missing and corrupt files told apart."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from bench.data.base import (
    BenchDataset,
    _one_line,
    _to_tensor,
)
from bench.registry import register_dataset


@register_dataset("svhn")
class SVHN(BenchDataset):
    """SVHN cropped digits, 32x32 colour (torchvision layout: <root>/{train,test}_32x32.mat)."""

    input_shape = (3, 32, 32)
    eps_max = 16 / 255
    default_eps = 8 / 255
    models = ("resnet18", "vgg11")
    fit_images = 10000

    def _load(self, split: str) -> Dataset:
        from scipy.io.matlab import MatReadError
        from torchvision import datasets
        from torchvision.datasets import svhn

        path, md5 = self._file(split)
        try:
            ds = datasets.SVHN(str(self.root), split=split, download=self.download,
                               transform=_to_tensor())
        except RuntimeError as exc:
            self._check_md5([(path, md5)], svhn)
            raise self._missing(path, "the SVHN .mat file") from exc
        except (MatReadError, OSError, ValueError, EOFError, KeyError, TypeError,
                IndexError) as exc:  # scipy's loadmat, then torchvision's reshaping of X and y
            if not path.is_file():
                raise  # a failed download (URLError is an OSError), not a damaged file
            raise self._corrupt(path, f"unreadable: {_one_line(exc)}") from exc
        if tuple(ds.data.shape[1:]) != self.input_shape or len(ds.data) != len(ds.labels):
            raise self._corrupt(path, f"X holds {len(ds.data)} images of shape "
                                      f"{tuple(ds.data.shape[1:])} (32x32x3 expected) and y "
                                      f"{len(ds.labels)} labels")
        x = torch.from_numpy(ds.data).float().div(255.0)  # already N x C x H x W
        return TensorDataset(x.contiguous(), torch.from_numpy(ds.labels).long())

    def _check(self, splits: tuple[str, ...]) -> None:
        from torchvision.datasets import svhn

        for split in splits:
            path, md5 = self._file(split)
            if not path.is_file() and not self.download:
                raise self._missing(path, "the SVHN .mat file")
            if not self.download:
                self._check_md5([(path, md5)], svhn)

    def _file(self, split: str) -> tuple[Path, str]:
        """The path of ``split``'s .mat file and its published md5."""
        from torchvision import datasets

        _, filename, md5 = datasets.SVHN.split_list[split]
        return self._root_folder() / filename, md5
