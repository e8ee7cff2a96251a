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

import hashlib
import logging
import math
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from bench.config import ENV_DATA_ROOT, data_root
from bench.errors import ConfigError, DataCorruptError, DataNotFoundError
from bench.registry import DATASETS, registered_name
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
    fit_recipe: tuple[tuple[str, Any], ...] = ()


class BenchDataset(ABC):
    """Base class of a registered dataset.

    Subclasses set the class attributes and implement :meth:`_load`. ``eps_max`` is the top of the
    usual L-inf budget range on this dataset (training-set recipes scale to it); ``default_eps``
    is what ``run`` uses without ``--eps``; ``models`` lists the default target then the
    surrogate; ``fit_images`` is how many training images a defense's recipe uses by default here.
    ``fit_recipe`` sets recipe options (``epochs``, ``lr``...) of the trainable defenses that
    take them from their dataset (:attr:`bench.defense.Defense.dataset_recipe`) where their own
    defaults, set for the papers' data sets, do not fit this one (the embedded ``digits``): applied
    beneath the run's ``--defense-opt`` and a variant's settings, and recorded, like them, in the
    defense's parameters (its weight key and every row's ``defense_params``).
    """

    input_shape: ClassVar[tuple[int, int, int]]
    num_classes: ClassVar[int] = 10
    eps_max: ClassVar[float]
    default_eps: ClassVar[float]
    models: ClassVar[tuple[str, ...]]
    fit_images: ClassVar[int]
    fit_recipe: ClassVar[dict[str, Any]] = {}
    folder: ClassVar[str] = ""

    def __init__(self, root: str | Path | None = None, download: bool = False, **_: Any) -> None:
        self.root = data_root(root)
        self.download = download

    @property
    def name(self) -> str:
        return registered_name(self)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, tuple(self.input_shape), self.num_classes, self.eps_max,
                           self.default_eps, tuple(self.models), self.fit_images,
                           tuple(sorted(self.fit_recipe.items())))

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

    def count(self, split: str, n: int | None = None) -> int:
        """How many images ``tensors(split, n)`` gives."""
        size = len(self.split(split))
        return size if n is None else min(n, size)

    def iter_tensors(self, split: str, n: int | None = None, batch_size: int = 500,
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` images of ``split`` as ``(x, y)`` batches, decoded one batch at a
        time (the same images and values as :meth:`tensors`)."""
        ds = self.split(split)
        count = self.count(split, n)
        for i in range(0, count, batch_size):
            yield gather(ds, range(i, min(i + batch_size, count)), batch_size)

    def source_key(self, split: str, n: int | None = None) -> Any:
        """What identifies the first ``n`` images of ``split`` without decoding them: for a
        folder dataset the path, label, size and modification time of each file it reads; for
        one held in memory a digest of those rows; None when neither is known. An on-disk copy
        of a slice made from other files is then never reused."""
        ds = self.split(split)
        count = self.count(split, n)
        samples = getattr(ds, "samples", None)
        if samples is not None:
            out = []
            for path, label in samples[:count]:
                st = os.stat(path)
                out.append((str(path), int(label), st.st_size, st.st_mtime_ns))
            return {"files": out, "transform": repr(getattr(ds, "transform", None))}
        if isinstance(ds, TensorDataset):
            h = hashlib.sha256()
            for t in ds.tensors:
                h.update(t[:count].contiguous().reshape(-1).view(torch.uint8).numpy())
            return {"tensors": h.hexdigest()}
        return None

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
