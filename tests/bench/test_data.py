"""Datasets, offline, from files written here in the exact layouts torchvision reads.

Only the md5 check of torchvision's CIFAR-10 and SVHN classes is bypassed (the files written here
cannot have the published checksums); everything else runs torchvision's real readers.
"""

from __future__ import annotations

import functools
import hashlib
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
from bench.errors import ConfigError, DataCorruptError, DataNotFoundError
from tests.bench.helpers import write_mnist


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


def test_cifar10_file_with_a_wrong_md5_is_corrupt_and_named(tmp_path: Path) -> None:
    """No md5 bypass: the batches written here are not the published ones."""
    write_cifar10(tmp_path)
    first = tmp_path.resolve() / "cifar-10-batches-py" / "data_batch_1"
    actual = hashlib.md5(first.read_bytes()).hexdigest()
    ds = get_dataset("cifar10", root=tmp_path)
    for call in (lambda: ds.tensors("test"), ds.check):
        with pytest.raises(DataCorruptError) as err:
            call()
        msg = str(err.value)
        assert f"file {first} is corrupt" in msg and "\n" not in msg
        assert f"its md5 is {actual}, torchvision expects c99cafc152244af753f735de768cd75f" in msg


def test_cifar10_missing_batch_is_missing_not_corrupt(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    ds = get_dataset("cifar10", root=tmp_path)
    for call in (lambda: ds.tensors("train"), ds.check):  # torchvision needs every batch
        with pytest.raises(DataNotFoundError, match="CIFAR-10 files test_batch not found under"):
            call()


def test_cifar10_unreadable_pickle_is_corrupt_and_named(tmp_path: Path, no_md5: None) -> None:
    write_cifar10(tmp_path)
    path = tmp_path.resolve() / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataCorruptError) as err:
        get_dataset("cifar10", root=tmp_path).tensors("test")
    assert f"file {path} is corrupt (cannot be unpickled:" in str(err.value)
    assert "\n" not in str(err.value)
    xt, _ = get_dataset("cifar10", root=tmp_path).tensors("train")  # the train batches are fine
    assert len(xt) == 15


def test_cifar10_batch_with_fewer_labels_than_images_is_corrupt(tmp_path: Path,
                                                                no_md5: None) -> None:
    write_cifar10(tmp_path)
    path = tmp_path.resolve() / "cifar-10-batches-py" / "data_batch_4"
    _write_py2_pickle(path, {"labels": [1, 2], "data": np.zeros((3, 3072), dtype=np.uint8)})
    with pytest.raises(DataCorruptError, match="data_batch_4 is corrupt \\(3 images but 2 labels"):
        get_dataset("cifar10", root=tmp_path).tensors("train")


def test_cifar10_check_with_download_lets_missing_files_through(tmp_path: Path) -> None:
    get_dataset("cifar10", root=tmp_path, download=True).check()
    with pytest.raises(DataNotFoundError):
        get_dataset("cifar10", root=tmp_path).check()


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


def test_svhn_file_with_a_wrong_md5_is_corrupt_and_named(tmp_path: Path) -> None:
    write_svhn(tmp_path, "test", 4)
    path = tmp_path.resolve() / "test_32x32.mat"
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    ds = get_dataset("svhn", root=tmp_path)
    for call in (lambda: ds.tensors("test"), lambda: ds.check(["test"])):
        with pytest.raises(DataCorruptError) as err:
            call()
        assert f"file {path} is corrupt (its md5 is {actual}, torchvision expects" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_svhn_unreadable_mat_file_is_corrupt_and_named(tmp_path: Path, no_md5: None,
                                                       damage: str) -> None:
    write_svhn(tmp_path, "test", 12)
    path = tmp_path.resolve() / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:2000] if damage == "truncated" else b"not a mat" * 50)
    with pytest.raises(DataCorruptError) as err:
        get_dataset("svhn", root=tmp_path).tensors("test")
    assert f"file {path} is corrupt (unreadable:" in str(err.value)
    assert "\n" not in str(err.value)


def test_svhn_mat_file_with_fewer_labels_than_images_is_corrupt(tmp_path: Path,
                                                                no_md5: None) -> None:
    from scipy.io import savemat

    savemat(str(tmp_path / "test_32x32.mat"),
            {"X": np.zeros((32, 32, 3, 5), dtype=np.uint8), "y": np.ones((4, 1), dtype=np.uint8)})
    with pytest.raises(DataCorruptError, match="X holds 5 images .* and y 4 labels"):
        get_dataset("svhn", root=tmp_path).tensors("test")


def test_svhn_check_needs_the_splits_asked_for(tmp_path: Path, no_md5: None) -> None:
    write_svhn(tmp_path, "test", 3)
    ds = get_dataset("svhn", root=tmp_path)
    ds.check(["test"])
    with pytest.raises(DataNotFoundError, match="train_32x32.mat"):
        ds.check()
    get_dataset("svhn", root=tmp_path, download=True).check()  # it would be downloaded


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


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_imagenet_image_that_cannot_be_decoded_is_named_when_read(tmp_path: Path,
                                                                  damage: str) -> None:
    from PIL import Image

    folder = tmp_path / "imagenet" / "val" / "n01440764"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(folder / "a_good.JPEG", quality=95)
    good = (folder / "a_good.JPEG").read_bytes()
    bad = folder / "bad.JPEG"
    bad.write_bytes(b"\x00garbage" * 20 if damage == "garbage" else good[: len(good) // 2])
    ds = get_dataset("imagenet", root=tmp_path, image_size=32)
    ds.check(["test"])  # nothing is decoded up front
    x, _ = ds.tensors("test", 1)  # the good image, read alone
    assert x[0].mean(dim=(1, 2))[0] > 0.95
    with pytest.raises(DataCorruptError) as err:
        ds.tensors("test")
    msg = str(err.value)
    assert f"file {bad.resolve()} is corrupt (cannot be decoded as an image:" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("layout", ["empty", "empty class folder", "no image files"])
def test_imagenet_split_folder_without_images_is_not_found(tmp_path: Path, layout: str) -> None:
    val = tmp_path / "imagenet" / "val"
    val.mkdir(parents=True)
    if layout != "empty":
        write_imagenet(tmp_path)
        (val / "n09999999").mkdir()
        if layout == "no image files":
            (val / "n09999999" / "notes.txt").write_text("not an image")
    ds = get_dataset("imagenet", root=tmp_path)
    for call in (lambda: ds.tensors("test"), lambda: ds.check(["test"])):
        with pytest.raises(DataNotFoundError) as err:
            call()
        msg = str(err.value)
        assert f"no images found in {val.resolve()}" in msg and "\n" not in msg
        assert ("no class folder" if layout == "empty" else "without images: n09999999") in msg


def test_imagenet_check_needs_both_folders_unless_told_otherwise(tmp_path: Path) -> None:
    write_imagenet(tmp_path)  # val only
    ds = get_dataset("imagenet", root=tmp_path)
    ds.check(["test"])
    with pytest.raises(DataNotFoundError, match="imagenet/train"):
        ds.check()
    with pytest.raises(DataNotFoundError, match="cannot be downloaded"):
        get_dataset("imagenet", root=tmp_path, download=True).check()


# -- MNIST: IDX files ----------------------------------------------------------------------------

def test_mnist_from_idx_files(tmp_path: Path) -> None:
    images, labels = write_mnist(tmp_path, "test", 5)
    write_mnist(tmp_path, "train", 3)
    ds = get_dataset("mnist", root=tmp_path)
    ds.check()
    x, y = ds.tensors("test")
    _check_images(x, y, 5, (1, 28, 28))
    assert torch.equal(x, torch.from_numpy(images).unsqueeze(1).float() / 255)
    assert y.tolist() == labels.tolist() == [0, 3, 6, 9, 2]
    assert len(ds.tensors("train")[0]) == 3


# name -> (file damaged, damage, what the message says); 5 test images of 28x28 = 3936 bytes
MNIST_DAMAGE = {
    "truncated": ("images", lambda b: b[:1000], "truncated: 1000 bytes, its header says 3936"),
    "too long": ("images", lambda b: b + b"\0", "wrong size: 3937 bytes, its header says 3936"),
    "short header": ("labels", lambda b: b[:6], "truncated: 6 bytes, its IDX header alone is 8"),
    "bad magic": ("images", lambda b: struct.pack(">i", 0x0802) + b[4:],
                  "bad magic number 0x00000802, MNIST images files start with 0x00000803"),
    "labels as images": ("images", lambda b: struct.pack(">2i", 2049, 5) + b[16:],
                         "bad magic number 0x00000801"),
    "28x27": ("images", lambda b: b[:12] + struct.pack(">i", 27) + b[16:16 + 5 * 28 * 27],
              "its header says 5 images of 28x27, MNIST images are 28x28"),
    "label 200": ("labels", lambda b: b[:10] + b"\xc8" + b[11:],
                  "label 200 at index 2, MNIST labels are 0..9"),
}


@pytest.mark.parametrize("case", sorted(MNIST_DAMAGE))
def test_mnist_damaged_file_is_corrupt_and_named_not_missing(tmp_path: Path, case: str) -> None:
    write_mnist(tmp_path, "test", 5)
    write_mnist(tmp_path, "train", 3)
    kind, damage, says = MNIST_DAMAGE[case]
    dims = 1 if kind == "labels" else 3
    path = tmp_path.resolve() / "MNIST" / "raw" / f"t10k-{kind}-idx{dims}-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    for download in (False, True):  # --download does not replace a file that is present
        ds = get_dataset("mnist", root=tmp_path, download=download)
        for call in (functools.partial(ds.tensors, "test"), ds.check):
            with pytest.raises(DataCorruptError) as err:
                call()
            msg = str(err.value)
            assert msg.startswith(f"mnist: file {path} is corrupt ({says}")
            assert msg.endswith("Replace it with a good copy (or delete it and pass --download).")
            assert "\n" not in msg
    get_dataset("mnist", root=tmp_path).check(["train"])  # the other split is fine


def test_mnist_image_and_label_counts_must_match(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", 5)
    write_mnist(tmp_path / "other", "test", 4)
    raw = tmp_path.resolve() / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").write_bytes(
        (tmp_path / "other" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())
    ds = get_dataset("mnist", root=tmp_path)
    for call in (lambda: ds.tensors("test"), lambda: ds.check(["test"])):
        with pytest.raises(DataCorruptError) as err:
            call()
        msg = str(err.value)
        assert f"files {raw / 't10k-images-idx3-ubyte'} and {raw / 't10k-labels-idx1-ubyte'}" in msg
        assert "(5 images, 4 labels): one of them is corrupt" in msg and "\n" not in msg


def test_mnist_check_reports_missing_files_by_name(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", 5)
    ds = get_dataset("mnist", root=tmp_path)
    ds.check(["test"])
    with pytest.raises(DataNotFoundError) as err:
        ds.check()
    msg = str(err.value)
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte not found under" in msg
    assert str(tmp_path.resolve() / "MNIST" / "raw") in msg and "--download" in msg
    get_dataset("mnist", root=tmp_path, download=True).check()  # they would be downloaded


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


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "imagenet"])
def test_check_finds_missing_data_like_loading_does(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataNotFoundError) as err:
        get_dataset(name, root=tmp_path).check()
    assert str(tmp_path.resolve()) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "imagenet"])
def test_data_root_that_is_a_file_is_a_one_line_config_error(tmp_path: Path, name: str) -> None:
    root = tmp_path / "data"
    root.write_text("not a folder")
    ds = get_dataset(name, root=root, download=True)
    for call in (lambda: ds.tensors("test"), ds.check):
        with pytest.raises(ConfigError) as err:
            call()
        msg = str(err.value)
        assert f"the data root {root.resolve()} is a file, not a folder" in msg
        assert "--data-root" in msg and "\n" not in msg


def test_check_of_an_unknown_split_is_a_config_error() -> None:
    get_dataset("digits").check()  # embedded: nothing to check
    with pytest.raises(ConfigError, match="'val'"):
        get_dataset("mnist").check(["val"])


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


def test_mnist_real_files_pass_the_check(mnist_root: Path) -> None:
    get_dataset("mnist", root=mnist_root).check()


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
