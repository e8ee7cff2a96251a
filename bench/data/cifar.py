"""CIFAR-10 in torchvision's python-pickle layout; missing and corrupt batch files told apart."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from bench.data.base import (
    _REPLACE_ALL,
    _UNPICKLE_ERRORS,
    BenchDataset,
    _one_line,
    _to_tensor,
)
from bench.errors import DataCorruptError
from bench.registry import register_dataset


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
