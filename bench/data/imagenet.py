"""ImageNet in the standard folder layout; an image that cannot be decoded is named."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from bench.data.base import (
    BenchDataset,
    _one_line,
)
from bench.errors import DataCorruptError, DataNotFoundError
from bench.registry import register_dataset

log = logging.getLogger(__name__)


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
