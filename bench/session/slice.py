"""The evaluated slice of a session: the first ``n`` test images and labels, in memory or on
disk, and its identity (a digest of its pixels and labels).

Every number of a cell is computed on this slice, so its digest is part of every cell's and every
adversarial set's identity: other files, or another decoder, give another slice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import weakref
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch

from bench.cache import Cache, stable_hash
from bench.config import stream_bytes
from bench.data import BenchDataset
from bench.errors import BenchError
from bench.stream import DiskTensor, DiskWriter, Images

log = logging.getLogger(__name__)
SPLIT = "test"


class TestSlice:
    """The first ``n`` images of a dataset's test split (all when None), read once.

    Args:
        dataset: the dataset.
        n: how many test images.
        cache: where an on-disk slice and the session's scratch sets live.
        batch_size: the batch size the slice is decoded with when written to disk (asked only
            then: it may be resolved by a probe).
    """

    __test__ = False  # not a pytest class

    def __init__(self, dataset: BenchDataset, n: int | None, cache: Cache,
                 batch_size: Callable[[], int]) -> None:
        self.dataset = dataset
        self.info = dataset.info
        self.n = n
        self.cache = cache
        self._batch_size = batch_size
        self._scratch_dir: Path | None = None

    @property
    def count(self) -> int:
        """How many images the slice holds (known without reading them)."""
        return self.dataset.count(SPLIT, self.n)

    @cached_property
    def test(self) -> tuple[Images, torch.Tensor]:
        """The evaluated slice: the first ``n`` test images and labels (CPU). Images in memory
        when they fit in ``$BENCH_STREAM_BYTES`` (2 GiB by default), else an on-disk copy read
        per batch (:mod:`bench.stream`), with every adversarial set of the slice on disk too:
        memory then does not grow with ``n`` (ImageNet val is 54 GB per float32 copy)."""
        count = self.count
        if count * math.prod(self.info.input_shape) * 4 <= stream_bytes():
            return self.dataset.tensors(SPLIT, self.n, copies=3)  # clean, adversarial, defended
        return self._on_disk(count)

    def _on_disk(self, count: int) -> tuple[DiskTensor, torch.Tensor]:
        """The slice decoded once, batch by batch, into an on-disk set in the cache (reused
        while the dataset's files are unchanged; verified when opened), with its labels and
        the digest :attr:`slice_id` names, computed as it is written."""
        source = self.dataset.source_key(SPLIT, self.n)
        key = {"dataset": self.info.name, "split": SPLIT, "n": count, "format": 1,
               "shape": list(self.info.input_shape),
               "source": stable_hash(source) if source is not None else None}
        folder = (self.cache.root / "slices" / f"{self.info.name}-{stable_hash(key)}"
                  if source is not None else self.scratch() / "slice")
        if (folder / "meta.json").exists():
            try:
                x = DiskTensor(folder, verify=True)
                if x.extra.get("key") == key:
                    return x, torch.tensor(x.extra["labels"], dtype=torch.long)
            except BenchError as exc:
                log.warning("rewriting the on-disk slice %s: %s", folder, exc)
        log.info("writing %d %s %s images to %s (read back per batch)", count, self.info.name,
                 SPLIT, folder)
        writer, h, labels = DiskWriter(folder), hashlib.sha256(), []
        try:
            for xb, yb in self.dataset.iter_tensors(SPLIT, self.n, self._batch_size()):
                xb = xb.to(torch.float32).contiguous()
                writer.write(xb)
                h.update(xb.reshape(-1).view(torch.uint8).numpy())
                labels.append(yb.long())
        except BaseException:
            writer.abort()
            raise
        y = torch.cat(labels)
        h.update(y.contiguous().reshape(-1).view(torch.uint8).numpy())
        x = writer.finish({"key": key, "labels": y.tolist(), "digest": h.hexdigest()})
        return x, y

    def scratch(self) -> Path:
        """A folder of this session's own on-disk sets (removed with the slice)."""
        if self._scratch_dir is None:
            root = self.cache.root / "tmp"
            root.mkdir(parents=True, exist_ok=True)
            self._scratch_dir = Path(tempfile.mkdtemp(dir=root, prefix="session-"))
            weakref.finalize(self, shutil.rmtree, self._scratch_dir, True)
        return self._scratch_dir

    @cached_property
    def slice_id(self) -> str:
        """The evaluated slice's identity: dataset, split, size and a digest of its pixels and
        labels (other files, or another decoder, give another slice); the same digest whether
        the slice is in memory or on disk."""
        x, y = self.test
        if isinstance(x, DiskTensor):
            return f"{self.info.name}/{SPLIT}/{len(y)}/{x.extra['digest'][:16]}"
        h = hashlib.sha256()
        for t in (x, y):
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        return f"{self.info.name}/{SPLIT}/{len(y)}/{h.hexdigest()[:16]}"
