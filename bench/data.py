"""Datasets: images in [0,1] (float32, N x C x H x W) and integer labels.

Every dataset is a registered :class:`BenchDataset` that declares its shape, classes, typical
L-inf budget, the default target model and the second ("surrogate") model used to build attack
training sets and transfer attacks. ``--n`` evaluates the first ``n`` images of the test split in
the order the files store them (for ``digits``: the order of the fixed split below).

``digits`` is embedded: scikit-learn's real 8x8 handwritten digits (1,797 images, values 0..16),
scaled to [0,1] and resized bilinearly to 28x28 so the 28x28 models apply. The split is fixed: a
permutation drawn with seed 0, the first 1,437 images train, the last 360 test.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from bench.config import ENV_DATA_ROOT, data_root
from bench.errors import ConfigError, DataNotFoundError
from bench.registry import DATASETS, register_dataset
from bench.runtime import check_memory

log = logging.getLogger(__name__)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the harness needs to know about a dataset."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    eps_max: float
    default_eps: float
    models: tuple[str, ...]
    fit_images: int


class BenchDataset(ABC):
    """Base class of a registered dataset.

    Subclasses set the class attributes and implement :meth:`_load`. ``eps_max`` is the top of the
    usual L-inf budget range on this dataset (training-set recipes scale to it); ``default_eps``
    is what ``run`` uses without ``--eps``; ``models`` lists the default target then the
    surrogate; ``fit_images`` is how many training images a defense's recipe uses by default here.
    """

    input_shape: ClassVar[tuple[int, int, int]]
    num_classes: ClassVar[int] = 10
    eps_max: ClassVar[float]
    default_eps: ClassVar[float]
    models: ClassVar[tuple[str, ...]]
    fit_images: ClassVar[int]
    folder: ClassVar[str] = ""

    def __init__(self, root: str | Path | None = None, download: bool = False, **_: Any) -> None:
        self.root = data_root(root)
        self.download = download

    @property
    def name(self) -> str:
        return getattr(self, "registry_name", type(self).__name__.lower())

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, tuple(self.input_shape), self.num_classes, self.eps_max,
                           self.default_eps, tuple(self.models), self.fit_images)

    def split(self, split: str) -> Dataset:
        """The whole split as a map-style dataset of ``(image CxHxW in [0,1], label)``."""
        if split not in SPLITS:
            raise ConfigError(f"Unknown split {split!r}: use one of {SPLITS}.")
        return self._load(split)

    def tensors(self, split: str, n: int | None = None, batch_size: int = 500,
                copies: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images of ``split`` (all when None) as tensors ``(x, y)``.

        ``copies``: when positive, first check that this many float32 copies of the slice fit in
        the available memory (e.g. clean, adversarial and defended images of an evaluation), and
        raise a ConfigError naming the ``--n`` that fits otherwise (ImageNet's 50,000 validation
        images are 54 GB per copy at 299 px)."""
        ds = self.split(split)
        if n is not None and n > len(ds):
            log.warning("%s %s has %d images; --n %d uses all of them",
                        self.name, split, len(ds), n)
        count = len(ds) if n is None else min(n, len(ds))
        if copies:
            check_memory(count, copies * math.prod(self.input_shape) * 4,
                         f"{count} {self.name} {split} images x {copies} float32 copies", "--n")
        return gather(ds, range(count), batch_size)

    @abstractmethod
    def _load(self, split: str) -> Dataset:
        """Read ``split`` (``train`` or ``test``) from disk or memory."""

    def _missing(self, looked_at: Path, what: str) -> DataNotFoundError:
        return DataNotFoundError(
            f"{self.name}: {what} not found under {looked_at}. Either point the data root at the "
            f"folder that holds it (--data-root DIR or ${ENV_DATA_ROOT}), or pass --download to "
            f"let torchvision fetch it there."
        )


def _to_tensor() -> Any:
    from torchvision import transforms

    return transforms.ToTensor()


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


@register_dataset("mnist")
class MNIST(BenchDataset):
    """MNIST handwritten digits, 28x28 grey (torchvision layout: <root>/MNIST/raw)."""

    input_shape = (1, 28, 28)
    eps_max = 0.3
    default_eps = 0.2
    models = ("cnn", "cnn3x3")
    fit_images = 10000

    def _load(self, split: str) -> Dataset:
        from torchvision import datasets

        try:
            ds = datasets.MNIST(str(self.root), train=split == "train", download=self.download,
                                transform=_to_tensor())
        except RuntimeError as exc:
            raise self._missing(self.root / "MNIST" / "raw", "the MNIST files") from exc
        # MNIST keeps uint8 tensors in memory: convert once instead of per item.
        return TensorDataset(ds.data.unsqueeze(1).float().div(255.0), ds.targets.long())


@register_dataset("cifar10")
class CIFAR10(BenchDataset):
    """CIFAR-10, 32x32 colour (torchvision layout: <root>/cifar-10-batches-py)."""

    input_shape = (3, 32, 32)
    eps_max = 16 / 255
    default_eps = 8 / 255
    models = ("resnet18", "vgg11")
    fit_images = 10000

    def _load(self, split: str) -> Dataset:
        from torchvision import datasets

        try:
            ds = datasets.CIFAR10(str(self.root), train=split == "train", download=self.download,
                                  transform=_to_tensor())
        except RuntimeError as exc:
            raise self._missing(self.root / "cifar-10-batches-py", "the CIFAR-10 batches") from exc
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div(255.0)
        return TensorDataset(x.contiguous(), torch.tensor(ds.targets, dtype=torch.long))


@register_dataset("svhn")
class SVHN(BenchDataset):
    """SVHN cropped digits, 32x32 colour (torchvision layout: <root>/{train,test}_32x32.mat)."""

    input_shape = (3, 32, 32)
    eps_max = 16 / 255
    default_eps = 8 / 255
    models = ("resnet18", "vgg11")
    fit_images = 10000

    def _load(self, split: str) -> Dataset:
        from torchvision import datasets

        try:
            ds = datasets.SVHN(str(self.root), split=split, download=self.download,
                               transform=_to_tensor())
        except RuntimeError as exc:
            raise self._missing(self.root / f"{split}_32x32.mat", "the SVHN .mat file") from exc
        x = torch.from_numpy(ds.data).float().div(255.0)  # already N x C x H x W
        return TensorDataset(x.contiguous(), torch.from_numpy(ds.labels).long())


@register_dataset("imagenet")
class ImageNet(BenchDataset):
    """ImageNet in the standard folder layout <root>/imagenet/{train,val}/<wnid>/*.JPEG.

    Images are resized (shorter side to size/0.875) and centre-cropped to ``image_size``
    (299 by default, the Inception-v3 input of the HGD paper). Class indices follow the sorted
    WordNet ids, the order of torchvision's and timm's pretrained models. The test split is
    ``val``; ``--n`` takes its first n images in sorted (class, file name) order.
    """

    input_shape = (3, 299, 299)
    num_classes = 1000
    eps_max = 16 / 255
    default_eps = 4 / 255
    models = ("timm:inception_v3", "timm:resnet50")
    fit_images = 30000
    folder = "imagenet"

    def __init__(self, root: str | Path | None = None, download: bool = False,
                 image_size: int = 299, **kw: Any) -> None:
        super().__init__(root, download, **kw)
        self.image_size = image_size
        self.input_shape = (3, image_size, image_size)  # type: ignore[misc]

    def _load(self, split: str) -> Dataset:
        from torchvision import datasets, transforms

        sub = self.root / self.folder / ("val" if split == "test" else "train")
        if not sub.is_dir():
            if self.download:
                raise DataNotFoundError(
                    f"imagenet: cannot be downloaded automatically (licence); put the images in "
                    f"{sub}/<wnid>/*.JPEG and rerun."
                )
            raise self._missing(sub, "the ImageNet folder <wnid>/*.JPEG")
        size = self.image_size
        tf = transforms.Compose([transforms.Resize(int(round(size / 0.875))),
                                 transforms.CenterCrop(size), transforms.ToTensor()])
        ds = datasets.ImageFolder(str(sub), transform=tf)
        if len(ds.classes) != self.num_classes:
            log.warning("imagenet %s has %d class folders, not %d: labels follow their sorted "
                        "order", split, len(ds.classes), self.num_classes)
        return ds


def gather(ds: Dataset, indices: Sequence[int] | torch.Tensor,
           batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``indices`` of ``ds`` (in that order) as tensors ``(x, y)``, reading only those:
    a few thousand images of ImageNet's 1.28M training images must not decode the rest."""
    if isinstance(ds, TensorDataset):  # in memory: index, no per-item loop
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ds.tensors[0][idx], ds.tensors[1][idx]
    xs, ys = [], []
    for x, y in DataLoader(Subset(ds, [int(i) for i in indices]), batch_size=batch_size,
                           shuffle=False):
        xs.append(x.float())
        ys.append(torch.as_tensor(y).long())
    if not xs:
        raise ConfigError("No images to read: the split or the selection is empty; check the "
                          "data folder and --n / --fit-images.")
    return torch.cat(xs), torch.cat(ys)


def get_dataset(name: str, root: str | Path | None = None, download: bool = False,
                **kwargs: Any) -> BenchDataset:
    """Build the registered dataset ``name`` (raises UnknownPluginError with suggestions)."""
    return DATASETS.build(name, root=root, download=download, **kwargs)
