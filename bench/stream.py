"""Image sets larger than memory: written to disk as they are produced, read back per batch.

A :class:`DiskTensor` is an N x C x H x W float32 array in fixed-size shard files of raw bytes,
read with plain file reads (never memory-mapped: mapped pages would count in the process's
resident set as the whole set is swept). Indexing it with a batch of row indices returns those
rows as a tensor; only that batch is ever in memory. :class:`Rows` is a lazy selection of
another set's rows (e.g. the survivors an attack suite still attacks), indexed the same way.
Everything that walks a slice batch by batch (evaluation, crafting, validation, digests) takes a
tensor, a :class:`DiskTensor` or a :class:`Rows` alike.

A finished set's folder holds ``meta.json`` (shape, shard size, SHA-256 of every shard), written
last and atomically, so a folder without it is an interrupted write (a miss, never a set).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
import torch

from bench.errors import AttackValidationError, CheckpointError

SHARD_ROWS = 512
META = "meta.json"


class RowSource(Protocol):
    """What a batch loop reads: ``len`` rows, each batch by ``source[index_tensor]``."""

    def __len__(self) -> int: ...

    def __getitem__(self, idx: Any) -> torch.Tensor: ...


Images = Union[torch.Tensor, "DiskTensor", "Rows"]


def _indices(idx: Any, n: int) -> np.ndarray:
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    if isinstance(idx, int):
        return np.asarray([idx])
    out = np.asarray(torch.as_tensor(idx).cpu().numpy(), dtype=np.int64).reshape(-1)
    if out.size and (out.min() < -n or out.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(out < 0, out + n, out)


class DiskTensor:
    """A finished on-disk set (see the module docstring); ``verify`` checks every shard's
    digest once when it is opened."""

    def __init__(self, folder: str | os.PathLike[str], verify: bool = False) -> None:
        self.folder = Path(folder)
        try:
            meta = json.loads((self.folder / META).read_text())
            self.shape = tuple(int(s) for s in meta["shape"])
            self.shard_rows = int(meta["shard_rows"])
            self.digests = list(meta["digests"])
            self.digest = str(meta["digest"])
            self.extra = dict(meta.get("extra", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"On-disk image set {self.folder} is unreadable ({exc}); "
                                  f"delete the folder to recompute it.") from None
        self.row_bytes = math.prod(self.shape[1:]) * 4
        if verify:
            self.verify()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _shard(self, k: int) -> Path:
        return self.folder / f"shard-{k:06d}.f32"

    def verify(self) -> None:
        """Raise CheckpointError when a shard is missing, truncated or altered."""
        for k, want in enumerate(self.digests):
            h = hashlib.sha256()
            try:
                with open(self._shard(k), "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 24), b""):  # noqa: B023
                        h.update(chunk)
            except OSError as exc:
                raise CheckpointError(f"On-disk image set {self.folder}: shard {k} cannot be "
                                      f"read ({exc}); delete the folder to recompute it.") from None
            if h.hexdigest() != want:
                raise CheckpointError(f"On-disk image set {self.folder}: shard {k} was altered "
                                      f"or truncated; delete the folder to recompute it.")

    def __getitem__(self, idx: Any) -> torch.Tensor:
        rows = _indices(idx, len(self))
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        flat = out.reshape(len(rows), math.prod(self.shape[1:]))
        # Consecutive rows of one shard are read with one call.
        start = 0
        while start < len(rows):
            r = int(rows[start])
            k, off = divmod(r, self.shard_rows)
            end = start + 1
            while (end < len(rows) and rows[end] == rows[end - 1] + 1
                   and rows[end] // self.shard_rows == k):
                end += 1
            with open(self._shard(k), "rb") as f:
                f.seek(off * self.row_bytes)
                data = np.fromfile(f, dtype=np.float32, count=(end - start) * flat.shape[1])
            if data.size != (end - start) * flat.shape[1]:
                raise CheckpointError(f"On-disk image set {self.folder}: shard {k} is "
                                      f"truncated; delete the folder to recompute it.")
            flat[start:end] = data.reshape(end - start, -1)
            start = end
        return torch.from_numpy(out)


class DiskWriter:
    """Writes a :class:`DiskTensor` batch by batch into a temporary folder beside ``folder``,
    renamed into place by :meth:`finish` (an interrupted write leaves no set)."""

    def __init__(self, folder: str | os.PathLike[str], shard_rows: int = SHARD_ROWS) -> None:
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=self.folder.name + "."))
        self.shard_rows = shard_rows
        self.rows = 0
        self.item: tuple[int, ...] | None = None
        self.digests: list[str] = []
        self._hash = hashlib.sha256()
        self._file: Any = None
        self._shard_hash: Any = None

    def write(self, batch: torch.Tensor) -> None:
        b = batch.detach().to("cpu", torch.float32).contiguous()
        if self.item is None:
            self.item = tuple(b.shape[1:])
        elif tuple(b.shape[1:]) != self.item:
            raise ValueError(f"batch of shape {tuple(b.shape)} in a set of {self.item}")
        data = b.numpy().reshape(len(b), -1)
        done = 0
        while done < len(data):
            if self._file is None:
                k = len(self.digests)
                self._file = open(self.tmp / f"shard-{k:06d}.f32", "wb")  # noqa: SIM115
                self._shard_hash = hashlib.sha256()
            room = self.shard_rows - (self.rows % self.shard_rows)
            part = data[done:done + room].tobytes()
            self._file.write(part)
            self._shard_hash.update(part)
            self._hash.update(part)
            take = min(room, len(data) - done)
            done += take
            self.rows += take
            if self.rows % self.shard_rows == 0:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self.digests.append(self._shard_hash.hexdigest())
            self._file = None

    def finish(self, extra: dict[str, Any] | None = None) -> DiskTensor:
        """Close the set and move it into place; ``extra`` (JSON) is kept in its metadata."""
        self._close_shard()
        meta = {"shape": [self.rows, *(self.item or ())], "shard_rows": self.shard_rows,
                "digests": self.digests, "digest": self._hash.hexdigest(),
                "extra": extra or {}}
        (self.tmp / META).write_text(json.dumps(meta))
        if self.folder.exists():
            try:  # written meanwhile by another process (a Ray worker): the same bytes
                there = DiskTensor(self.folder, verify=True)  # a damaged set is not kept
                if there.digest == meta["digest"] and there.shape == tuple(meta["shape"]):
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    return there
            except CheckpointError:
                pass
            # A damaged or different set: moved aside in one rename, then replaced.
            aside = self.folder.with_name(f"{self.folder.name}.old-{os.getpid()}-{id(self)}")
            os.replace(self.folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(self.tmp, self.folder)
        return DiskTensor(self.folder)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Rows:
    """Rows ``index`` of ``base`` (a tensor or an on-disk set), read only when indexed."""

    def __init__(self, base: Images, index: torch.Tensor) -> None:
        self.base, self.index = base, torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *tuple(self.base.shape[1:]))

    def __getitem__(self, idx: Any) -> torch.Tensor:
        return self.base[self.index[idx]]


def take(images: Images, index: torch.Tensor) -> Images:
    """Rows ``index`` of ``images``: a tensor when ``images`` is one (in memory already), else a
    lazy :class:`Rows`."""
    return images[index] if isinstance(images, torch.Tensor) else Rows(images, index)


def on_disk(images: Images) -> bool:
    return not isinstance(images, torch.Tensor)


def iter_batches(images: Images, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(index, rows)`` batch by batch."""
    for i in range(0, len(images), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(images)))
        yield idx, images[idx]


def digest(images: Images, batch_size: int = 256) -> str:
    """SHA-256 of the rows' float32 bytes in order (the same for a tensor and its disk copy)."""
    if isinstance(images, DiskTensor):
        return images.digest
    h = hashlib.sha256()
    for _, xb in iter_batches(images, batch_size):
        h.update(xb.to(torch.float32).contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def validate_stream(x: Images, x_adv: Images, eps: float, what: str, batch_size: int) -> None:
    """:func:`bench.attack.validate_adversarial` batch by batch (a set on disk is never held
    whole)."""
    from bench.attack import validate_adversarial

    if len(x_adv) != len(x):
        raise AttackValidationError(f"{what} has {len(x_adv)} images for a slice of {len(x)}; "
                                    f"nothing was recorded.")
    for i in range(0, len(x), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(x)))
        validate_adversarial(x[idx], x_adv[idx], eps, what)
