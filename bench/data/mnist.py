"""MNIST in torchvision's raw IDX layout, with its headers and sizes checked before reading."""

from __future__ import annotations

import math
from pathlib import Path

from torch.utils.data import Dataset, TensorDataset

from bench.data.base import (
    _REPLACE_ALL,
    BenchDataset,
    _to_tensor,
)
from bench.errors import DataCorruptError
from bench.registry import register_dataset

# IDX headers of the MNIST files: the magic number, then one big-endian int32 per dimension.
_IDX = {"images": (0x00000803, (28, 28)), "labels": (0x00000801, ())}


@register_dataset("mnist")
class MNIST(BenchDataset):
    """MNIST handwritten digits, 28x28 grey (torchvision layout: <root>/MNIST/raw).

    The raw IDX files are validated (magic number, dimensions, file size, image and label counts,
    label values) before torchvision reads them."""

    input_shape = (1, 28, 28)
    eps_max = 0.3
    default_eps = 0.2
    models = ("cnn", "cnn3x3")
    fit_images = 10000

    def _load(self, split: str) -> Dataset:
        from torchvision import datasets

        self._check_raw(split)
        try:
            ds = datasets.MNIST(str(self.root), train=split == "train", download=self.download,
                                transform=_to_tensor())
        except RuntimeError as exc:
            raise self._missing(self.root / "MNIST" / "raw", "the MNIST files") from exc
        # MNIST keeps uint8 tensors in memory: convert once instead of per item.
        return TensorDataset(ds.data.unsqueeze(1).float().div(255.0), ds.targets.long())

    def _check(self, splits: tuple[str, ...]) -> None:
        for split in splits:
            self._check_raw(split)

    def _check_raw(self, split: str) -> None:
        """Validate the raw files of ``split``; missing ones pass when torchvision will fetch them
        (``download``) or read its legacy ``processed/*.pt`` files instead."""
        mnist = self._root_folder() / "MNIST"
        if all((mnist / "processed" / f).is_file() for f in ("training.pt", "test.pt")):
            return  # torchvision reads these and ignores the raw files
        prefix = "train" if split == "train" else "t10k"
        images = mnist / "raw" / f"{prefix}-images-idx3-ubyte"
        labels = mnist / "raw" / f"{prefix}-labels-idx1-ubyte"
        missing = [p.name for p in (images, labels) if not p.is_file()]
        if missing and self.download:
            return
        if missing:
            raise self._missing(mnist / "raw", "the MNIST files " + ", ".join(missing))
        n_images, n_labels = self._idx_count(images, "images"), self._idx_count(labels, "labels")
        if n_images != n_labels:
            raise DataCorruptError(
                f"{self.name}: files {images} and {labels} do not match ({n_images} images, "
                f"{n_labels} labels): one of them is corrupt. {_REPLACE_ALL}")
        values = labels.read_bytes()[8:]
        if values and max(values) >= self.num_classes:
            at = values.index(max(values))
            raise self._corrupt(labels, f"label {max(values)} at index {at}, MNIST labels are "
                                        f"0..{self.num_classes - 1}")

    def _idx_count(self, path: Path, kind: str) -> int:
        """The item count of the IDX file ``path`` of ``kind`` (images or labels), after checking
        its magic number, its dimensions and that its size is the header's plus the data's."""
        magic, item = _IDX[kind]
        header_size = 4 * (2 + len(item))
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(header_size)
        if len(header) >= 4 and int.from_bytes(header[:4], "big") != magic:
            raise self._corrupt(path, f"bad magic number 0x{int.from_bytes(header[:4], 'big'):08x}"
                                      f", MNIST {kind} files start with 0x{magic:08x}")
        if len(header) < header_size:
            raise self._corrupt(path, f"truncated: {size} bytes, its IDX header alone is "
                                      f"{header_size}")
        n, *dims = (int.from_bytes(header[i:i + 4], "big") for i in range(4, header_size, 4))
        if tuple(dims) != item:
            raise self._corrupt(path, f"its header says {n} images of {'x'.join(map(str, dims))}"
                                      f", MNIST images are 28x28")
        expected = header_size + n * math.prod(item)
        if size != expected:
            what = "truncated" if size < expected else "wrong size"
            raise self._corrupt(path, f"{what}: {size} bytes, its header says {expected}")
        return n
