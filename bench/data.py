"""Datasets: images in [0,1] (float32, N x C x H x W) and integer labels.

Every dataset is a registered :class:`BenchDataset` that declares its shape, classes, typical
L-inf budget, the default target model and the second ("surrogate") model used to build attack
training sets and transfer attacks. ``--n`` evaluates the first ``n`` images of the test split in
the order the files store them (for ``digits``: the order of the fixed split below).

``digits`` is embedded: scikit-learn's real 8x8 handwritten digits (1,797 images, values 0..16),
scaled to [0,1] and resized bilinearly to 28x28 so the 28x28 models apply. The split is fixed: a
permutation drawn with seed 0, the first 1,437 images train, the last 360 test.

Missing files raise :class:`DataNotFoundError`; present but unreadable ones (truncated, a wrong
checksum, bad content) raise :class:`DataCorruptError` naming the file. :meth:`BenchDataset.check`
finds both up front from headers, sizes and checksums, without decoding any image.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from bench.config import ENV_DATA_ROOT, data_root
from bench.errors import ConfigError, DataCorruptError, DataNotFoundError
from bench.registry import DATASETS, register_dataset
from bench.runtime import check_memory

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
_REPLACE = "Replace it with a good copy (or delete it and pass --download)."
_REPLACE_ALL = "Replace them with good copies (or delete them and pass --download)."
# What pickle.load raises on a damaged file (garbage opcodes, a cut-off stream, odd objects).
_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError,
                    AttributeError, ImportError)


def _one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line (library messages may span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


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
        _check_split_name(split)
        return self._load(split)

    def check(self, splits: Sequence[str] = SPLITS) -> None:
        """Check cheaply, before any training, that the files of ``splits`` are there and sound.

        Reads headers, sizes and checksums, never decodes an image, and raises what loading
        would: DataNotFoundError for missing files, DataCorruptError for damaged ones, ConfigError
        for a bad data root. With ``download`` set, missing files pass (they will be fetched).

        Args:
            splits: the splits the run will read (both by default).
        """
        for split in splits:
            _check_split_name(split)
        self._check(tuple(splits))

    def _check(self, splits: tuple[str, ...]) -> None:
        """The dataset's own part of :meth:`check`; nothing to check by default."""
        return None

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

    def _corrupt(self, path: Path, problem: str, fix: str = _REPLACE) -> DataCorruptError:
        return DataCorruptError(f"{self.name}: file {path} is corrupt ({problem}). {fix}")

    def _root_folder(self) -> Path:
        """The data root, refused when it is a regular file (a folder that is absent is fine)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(
                f"{self.name}: the data root {self.root} is a file, not a folder. Point "
                f"--data-root DIR (or ${ENV_DATA_ROOT}) at the folder that holds the datasets.")
        return self.root

    def _check_md5(self, files: Sequence[tuple[Path, str]], reader: ModuleType) -> None:
        """Raise DataCorruptError for the first present file whose md5 is not the published one.

        ``reader`` is the torchvision module whose ``check_integrity`` decides (looked up at call
        time, so a check bypassed there is bypassed here too)."""
        from torchvision.datasets.utils import calculate_md5

        for path, md5 in files:
            if path.is_file() and not reader.check_integrity(str(path), md5):
                raise self._corrupt(path, f"its md5 is {calculate_md5(str(path))}, torchvision "
                                          f"expects {md5}")


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}: use one of {SPLITS}.")


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


def _cifar_problem(path: Path, meta: bool) -> str | None:
    """What is wrong with the CIFAR-10 pickle ``path`` (a batch, or the meta file), or None."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except _UNPICKLE_ERRORS as exc:
        return f"cannot be unpickled: {_one_line(exc)}"
    if not isinstance(entry, dict):
        return f"it holds a {type(entry).__name__}, not a dict"
    if meta:
        return None if "label_names" in entry else "no 'label_names' entry"
    labels = entry.get("labels", entry.get("fine_labels"))
    if "data" not in entry or labels is None:
        return "no 'data' or no 'labels' entry"
    shape = getattr(entry["data"], "shape", ())
    if len(shape) != 2 or shape[1] != 3 * 32 * 32:
        return f"its data has shape {tuple(shape)}, not N x 3072"
    return None if len(labels) == shape[0] else f"{shape[0]} images but {len(labels)} labels"


@register_dataset("cifar10")
class CIFAR10(BenchDataset):
    """CIFAR-10, 32x32 colour (torchvision layout: <root>/cifar-10-batches-py).

    torchvision needs all six batches and ``batches.meta`` for either split and checks their md5;
    a failure is reported as the file that is missing or whose md5 differs."""

    input_shape = (3, 32, 32)
    eps_max = 16 / 255
    default_eps = 8 / 255
    models = ("resnet18", "vgg11")
    fit_images = 10000

    def _load(self, split: str) -> Dataset:
        from torchvision import datasets

        folder = self._root_folder() / datasets.CIFAR10.base_folder
        try:
            ds = datasets.CIFAR10(str(self.root), train=split == "train", download=self.download,
                                  transform=_to_tensor())
        except RuntimeError as exc:
            self._check_files(missing_ok=False, md5=True)
            raise self._missing(folder, "the CIFAR-10 batches") from exc
        except _UNPICKLE_ERRORS as exc:
            raise self._unreadable(split, exc) from exc
        if len(ds.data) != len(ds.targets):
            raise self._unreadable(split, ValueError(f"{len(ds.data)} images, "
                                                     f"{len(ds.targets)} labels"))
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div(255.0)
        return TensorDataset(x.contiguous(), torch.tensor(ds.targets, dtype=torch.long))

    def _check(self, splits: tuple[str, ...]) -> None:
        self._check_files(missing_ok=self.download, md5=not self.download)

    def _files(self, split: str | None = None) -> list[tuple[Path, str]]:
        """``(path, md5)`` of the batches of ``split`` (all when None), then of the meta file."""
        from torchvision import datasets

        cls = datasets.CIFAR10
        batches = {"train": cls.train_list, "test": cls.test_list}.get(
            split or "", cls.train_list + cls.test_list)
        folder = self._root_folder() / cls.base_folder
        return [(folder / name, md5) for name, md5 in
                [*batches, [cls.meta["filename"], cls.meta["md5"]]]]

    def _check_files(self, missing_ok: bool, md5: bool) -> None:
        from torchvision.datasets import cifar

        files = self._files()
        missing = [path.name for path, _ in files if not path.is_file()]
        if missing and not missing_ok:
            what = ("the CIFAR-10 batches" if len(missing) == len(files) else
                    "the CIFAR-10 files " + ", ".join(missing))
            raise self._missing(files[0][0].parent, what)
        if md5:
            self._check_md5(files, cifar)

    def _unreadable(self, split: str, exc: BaseException) -> DataCorruptError:
        """The error for batches torchvision could not read, naming the first bad file."""
        for path, _ in self._files(split):
            problem = _cifar_problem(path, meta=path.name == "batches.meta")
            if problem:
                return self._corrupt(path, problem)
        folder = self.root / "cifar-10-batches-py"
        return DataCorruptError(f"{self.name}: the {split} batches under {folder} are corrupt "
                                f"({_one_line(exc)}). {_REPLACE_ALL}")


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


def _read_image(path: str, name: str = "imagenet") -> Any:
    """torchvision's image loader, with a file that cannot be decoded reported by name."""
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (FileNotFoundError, PermissionError):
        raise  # not a damaged file; the message names it
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataCorruptError(
            f"{name}: file {path} is corrupt (cannot be decoded as an image: {_one_line(exc)}). "
            f"Replace it with a good copy or delete it.") from exc


@register_dataset("imagenet")
class ImageNet(BenchDataset):
    """ImageNet in the standard folder layout <root>/imagenet/{train,val}/<wnid>/*.JPEG.

    Images are resized (shorter side to size/0.875) and centre-cropped to ``image_size``
    (299 by default, the Inception-v3 input of the HGD paper). Class indices follow the sorted
    WordNet ids, the order of torchvision's and timm's pretrained models. The test split is
    ``val``; ``--n`` takes its first n images in sorted (class, file name) order. An image that
    cannot be decoded raises DataCorruptError naming it when it is read.
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

        sub = self._split_folder(split)
        size = self.image_size
        tf = transforms.Compose([transforms.Resize(int(round(size / 0.875))),
                                 transforms.CenterCrop(size), transforms.ToTensor()])
        try:
            ds = datasets.ImageFolder(str(sub), transform=tf,
                                      loader=functools.partial(_read_image, name=self.name))
        except FileNotFoundError as exc:  # no class folder, or one without images
            self._scan(sub)  # says which
            raise self._no_images(sub, _one_line(exc)) from exc
        if len(ds.classes) != self.num_classes:
            log.warning("imagenet %s has %d class folders, not %d: labels follow their sorted "
                        "order", split, len(ds.classes), self.num_classes)
        return ds

    def _check(self, splits: tuple[str, ...]) -> None:
        for split in splits:
            self._scan(self._split_folder(split))

    def _split_folder(self, split: str) -> Path:
        """The folder of ``split``, once it is known to exist."""
        sub = self._root_folder() / self.folder / ("val" if split == "test" else "train")
        if not sub.is_dir():
            if self.download:
                raise DataNotFoundError(
                    f"imagenet: cannot be downloaded automatically (licence); put the images in "
                    f"{sub}/<wnid>/*.JPEG and rerun."
                )
            raise self._missing(sub, "the ImageNet folder <wnid>/*.JPEG")
        return sub

    def _scan(self, sub: Path) -> None:
        """Raise DataNotFoundError unless ``sub`` holds class folders that all hold an image file
        (as ImageFolder requires); each folder's scan stops at its first image, none is decoded."""
        from torchvision.datasets.folder import IMG_EXTENSIONS

        classes = sorted(e.path for e in os.scandir(sub) if e.is_dir())
        if not classes:
            raise self._no_images(sub, "no class folder")
        empty = [Path(c).name for c in classes if not any(
            f.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(c, followlinks=True)
            for f in files)]
        if empty:
            shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if empty[3:] else "")
            raise self._no_images(sub, f"class folders without images: {shown}")

    def _no_images(self, sub: Path, why: str) -> DataNotFoundError:
        return DataNotFoundError(
            f"imagenet: no images found in {sub} ({why}). Put them in {sub}/<wnid>/*.JPEG, one "
            f"folder per class, and delete folders that hold no image.")


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
