"""Datasets, offline, from files written here in the exact layouts torchvision reads.

Only the md5 check of torchvision's CIFAR-10 and SVHN classes is bypassed (the files written here
cannot have the published checksums); everything else runs torchvision's real readers.
"""

from __future__ import annotations

import logging
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.config import ENV_DATA_ROOT
from bench.data import SPLITS, BenchDataset, gather, get_dataset
from bench.errors import ConfigError, DataNotFoundError


def _check_images(x: torch.Tensor, y: torch.Tensor, n: int, shape: tuple[int, ...]) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert tuple(x.shape) == (n, *shape) and tuple(y.shape) == (n,)
    assert x.min() >= 0.0 and x.max() <= 1.0


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip only the checksum comparison of torchvision's CIFAR-10 and SVHN readers."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    monkeypatch.setattr("torchvision.datasets.svhn.check_integrity", lambda *a, **k: True)


# -- CIFAR-10: Python 2 pickles ------------------------------------------------------------------

def _py2_ops(obj: Any) -> bytes:
    """Pickle opcodes for ``obj`` with ``str`` written as a Python 2 byte string, as in the
    published CIFAR-10 files (Python 3 reads those back as ``str`` with ``encoding='latin1'``)."""
    if isinstance(obj, str):
        raw = obj.encode("latin1")
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING
        return b"T" + struct.pack("<i", len(raw)) + raw  # BINSTRING
    if isinstance(obj, list):
        return b"](" + b"".join(_py2_ops(v) for v in obj) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if isinstance(obj, dict):
        items = b"".join(_py2_ops(k) + _py2_ops(v) for k, v in obj.items())
        return b"}(" + items + b"u"  # EMPTY_DICT MARK ... SETITEMS
    return pickle.dumps(obj, protocol=2)[2:-1]  # numbers, arrays: without PROTO and STOP


def _write_py2_pickle(path: Path, obj: dict[str, Any]) -> None:
    path.write_bytes(b"\x80\x02" + _py2_ops(obj) + b".")


def write_cifar10(root: Path, n_train: int = 3, n_test: int = 7) -> dict[str, tuple]:
    """``<root>/cifar-10-batches-py`` with 5 training batches of ``n_train`` and one test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written: dict[str, tuple] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else n_train
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: R plane, G, B
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _write_py2_pickle(folder / name, {
            "batch_label": f"batch {i + 1} of 6", "labels": labels, "data": data,
            "filenames": [f"img_{i}_{j}.png" for j in range(n)]})
        written[name] = (data, labels)
    _write_py2_pickle(folder / "batches.meta", {
        "num_cases_per_batch": n_train, "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                        "ship", "truck"]})
    return written


def test_py2_pickle_reads_back_like_the_published_files(tmp_path: Path) -> None:
    _write_py2_pickle(tmp_path / "p", {"data": np.arange(3, dtype=np.uint8), "labels": [1, 2]})
    with open(tmp_path / "p", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert set(entry) == {"data", "labels"} and entry["labels"] == [1, 2]
    assert entry["data"].dtype == np.uint8 and entry["data"].tolist() == [0, 1, 2]


def test_cifar10_from_python_pickles(tmp_path: Path, no_md5: None) -> None:
    written = write_cifar10(tmp_path)
    ds = get_dataset("cifar10", root=tmp_path)
    assert ds.info.input_shape == (3, 32, 32) and ds.info.num_classes == 10

    x, y = ds.tensors("test")
    _check_images(x, y, 7, (3, 32, 32))
    data, labels = written["test_batch"]
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(x, expected)
    assert y.tolist() == labels

    x3, y3 = ds.tensors("test", 3)  # the first n, in file order
    assert torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])

    xt, yt = ds.tensors("train")  # the five batches, in order
    _check_images(xt, yt, 15, (3, 32, 32))
    assert yt.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    last = written["data_batch_5"][0].reshape(-1, 3, 32, 32)
    assert torch.equal(xt[-3:], torch.from_numpy(last).float() / 255)


# -- SVHN: MATLAB files ------------------------------------------------------------------------

def write_svhn(root: Path, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``<root>/<split>_32x32.mat``: X is 32x32x3xN uint8, y is Nx1 with 10 for the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # labels 1..10
    root.mkdir(parents=True, exist_ok=True)
    savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
    return x, y


def test_svhn_from_mat_files(tmp_path: Path, no_md5: None) -> None:
    x_raw, y_raw = write_svhn(tmp_path, "test", 12)
    ds = get_dataset("svhn", root=tmp_path)
    x, y = ds.tensors("test")
    _check_images(x, y, 12, (3, 32, 32))
    expected = torch.from_numpy(x_raw.transpose(3, 2, 0, 1).copy()).float() / 255  # N C H W
    assert torch.equal(x, expected)
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # torchvision maps 10 to 0
    x5, y5 = ds.tensors("test", 5)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])


# -- ImageNet: folder layout -------------------------------------------------------------------

COLOURS = {"n01440764": (255, 0, 0), "n01443537": (0, 255, 0), "n01484850": (0, 0, 255)}


def write_imagenet(root: Path) -> None:
    """``<root>/imagenet/val/<wnid>/*.JPEG``: two solid-colour images per class, created in an
    order that is not the sorted one, and one wide image whose sides must be cropped off."""
    from PIL import Image

    for wnid in ["n01484850", "n01440764", "n01443537"]:
        folder = root / "imagenet" / "val" / wnid
        folder.mkdir(parents=True)
        for i, size in [(2, (40, 50)), (1, (64, 48))]:
            Image.new("RGB", size, COLOURS[wnid]).save(
                folder / f"ILSVRC2012_val_{wnid[-3:]}{i}.JPEG", quality=95)
    # Red | green | blue thirds, 3:1: resized to 111x37 and centre-cropped to 32, only green stays.
    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, :32, 0], wide[:, 32:64, 1], wide[:, 64:, 2] = 255, 255, 255
    Image.fromarray(wide).save(root / "imagenet" / "val" / "n01443537" / "z_wide.JPEG",
                               quality=95)


def test_imagenet_from_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_imagenet(tmp_path)
    ds = get_dataset("imagenet", root=tmp_path, image_size=32)
    assert ds.info.input_shape == (3, 32, 32) and ds.info.num_classes == 1000
    with caplog.at_level(logging.WARNING, logger="bench.data"):
        x, y = ds.tensors("test")
    assert "3 class folders" in caplog.text
    _check_images(x, y, 7, (3, 32, 32))
    assert y.tolist() == [0, 0, 1, 1, 1, 2, 2]  # sorted WordNet ids, then sorted file names
    for i, wnid in zip([0, 2, 5], sorted(COLOURS), strict=True):
        mean = x[i].mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(COLOURS[wnid]) / 255.0, atol=0.03), (wnid, mean)
    wide = x[4].mean(dim=(1, 2))
    assert wide[1] > 0.95 and wide[0] < 0.05 and wide[2] < 0.05  # the sides were cropped off
    x2, y2 = ds.tensors("test", 2)
    assert torch.equal(x2, x[:2]) and torch.equal(y2, y[:2])


def test_imagenet_default_size_is_299(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    x, _ = get_dataset("imagenet", root=tmp_path).tensors("test", 1)
    assert tuple(x.shape) == (1, 3, 299, 299)


# -- missing data ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "looked_at"),
    [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("svhn", "test_32x32.mat"),
     ("imagenet", "imagenet/val")],
)
def test_missing_data_names_the_path_and_both_fixes(tmp_path: Path, name: str,
                                                    looked_at: str) -> None:
    with pytest.raises(DataNotFoundError) as err:
        get_dataset(name, root=tmp_path).tensors("test", 5)
    msg = str(err.value)
    assert str(tmp_path.resolve() / looked_at) in msg
    assert "--data-root" in msg and ENV_DATA_ROOT in msg and "--download" in msg
    assert "\n" not in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_imagenet_with_download_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        get_dataset("imagenet", root=tmp_path, download=True).tensors("test")
    assert str(tmp_path.resolve() / "imagenet" / "val") in str(err.value)


def test_data_root_comes_from_the_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    assert get_dataset("svhn").root == tmp_path.resolve()


# -- digits (embedded) and MNIST (real files) --------------------------------------------------

def test_digits_split_shape_range_and_determinism() -> None:
    ds = get_dataset("digits")
    xtr, ytr = ds.tensors("train")
    xte, yte = ds.tensors("test")
    _check_images(xtr, ytr, 1437, (1, 28, 28))
    _check_images(xte, yte, 360, (1, 28, 28))
    assert xte.max() > 0.9 and xte.min() == 0.0  # real strokes on a black background
    assert set(yte.tolist()) == set(range(10))
    x2, y2 = get_dataset("digits").tensors("test")
    assert torch.equal(x2, xte) and torch.equal(y2, yte)
    x5, y5 = ds.tensors("test", 5)
    assert torch.equal(x5, xte[:5]) and torch.equal(y5, yte[:5])


def test_n_larger_than_the_split_uses_all_of_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bench.data"):
        x, _ = get_dataset("digits").tensors("test", 1000)
    assert len(x) == 360 and "--n 1000" in caplog.text


@pytest.mark.parametrize("split", ["val", "validation", "TEST"])
def test_unknown_split_is_a_config_error(split: str) -> None:
    with pytest.raises(ConfigError, match=f"{split!r}"):
        get_dataset("digits").tensors(split)
    assert split not in SPLITS


def test_mnist_real_files(mnist_root: Path) -> None:
    ds = get_dataset("mnist", root=mnist_root)
    x, y = ds.tensors("test")
    _check_images(x, y, 10000, (1, 28, 28))
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    assert x.max() == 1.0 and x.min() == 0.0
    x3, y3 = ds.tensors("test", 3)
    assert torch.equal(x3, x[:3]) and y3.tolist() == [7, 2, 1]


# -- reading only what is used ---------------------------------------------------------------

class Counting(torch.utils.data.Dataset):
    """A file-backed split stand-in that records which items were read."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.read.append(i)
        return torch.full((1, 2, 2), i / self.n), i % 3


def test_gather_reads_only_the_requested_items_in_order() -> None:
    ds = Counting(1000)
    x, y = gather(ds, torch.tensor([7, 3, 999]))
    assert sorted(ds.read) == [3, 7, 999]
    assert x[:, 0, 0, 0].tolist() == pytest.approx([0.007, 0.003, 0.999])
    assert y.tolist() == [1, 0, 0]


def test_fit_images_read_only_those_training_images() -> None:
    """A defense fit on n images of a big training split (ImageNet's 1.28M) reads n of them."""
    from bench.defense import FitContext

    class Big(BenchDataset):
        input_shape, num_classes, eps_max, default_eps = (1, 2, 2), 3, 0.1, 0.1
        models, fit_images = ("cnn",), 5

        def __init__(self) -> None:
            super().__init__()
            self.train = Counting(100_000)

        def _load(self, split: str) -> torch.utils.data.Dataset:
            return self.train

    big = Big()
    x, _ = FitContext(big, None, [], torch.device("cpu"), None).train_tensors()
    assert len(x) == 5 and len(big.train.read) == 5


def test_an_evaluation_slice_larger_than_memory_names_the_n_that_fits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.runtime

    ds = get_dataset("digits")
    per_image = 3 * 28 * 28 * 4  # three float32 copies of a 1x28x28 image
    monkeypatch.setattr(bench.runtime, "available_memory", lambda: 100 * per_image)
    with pytest.raises(ConfigError) as err:
        ds.tensors("test", copies=3)  # all 360 test images
    assert "--n 90 or fewer" in str(err.value) and "\n" not in str(err.value)
    assert len(ds.tensors("test", 90, copies=3)[0]) == 90
    assert len(ds.tensors("test")[0]) == 360  # no copies asked: no check
