"""What every layer may use: device choice, memory checks, RNG isolation and seeding, progress
bars, index batches and the finite-value check."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.errors import ConfigError, NonFiniteError

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_isolated(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """A context in which torch's global RNG (CPU, and ``device``'s if CUDA) may be used freely:
    its state is restored on exit, so what runs inside cannot shift the random stream of the code
    around it (e.g. a classifier trained lazily in the middle of a seeded defense fit)."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(count: int, unit_bytes: int, what: str, option: str) -> None:
    """Raise ConfigError when ``count`` items of ``unit_bytes`` (``what``) need more than 90% of
    the available memory, naming the value of ``option`` that fits: a clear error up front instead
    of the OOM killer midway."""
    free = available_memory()
    if free is None or count * unit_bytes <= 0.9 * free:
        return
    fits = int(0.9 * free // unit_bytes)
    raise ConfigError(f"{what} needs {count * unit_bytes / 2**30:.1f} GiB of memory but "
                      f"{free / 2**30:.1f} GiB is available: pass {option} {fits} or fewer, or "
                      f"use a machine with more memory.")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ConfigError: any other name, or a device that this machine does not have.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu.")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}.")
        return torch.device(name)
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("--device mps: Apple's MPS backend is not available here; use "
                              "--device cpu.")
        return torch.device("mps")
    raise ConfigError(f"--device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps.")


_quiet = False


def set_quiet(quiet: bool) -> None:
    """``-q``: no progress bars and no end-of-stage lines."""
    global _quiet
    _quiet = bool(quiet)


class _StageLog:
    """What :func:`progress` gives when stderr is not a terminal (a CI or nightly log): the same
    interface as a tqdm bar, drawing nothing, and one log line when the stage ends instead of
    thousands of carriage-return frames."""

    def __init__(self, iterable: Any = None, desc: str = "", total: int | None = None,
                 **_: Any) -> None:
        self.iterable, self.desc = iterable, desc or "stage"
        self.total = total if total is not None else (
            len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.start, self.closed = 0, "", time.perf_counter(), False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __enter__(self) -> _StageLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Any = None, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not _quiet:
            of = f"/{self.total}" if self.total is not None else ""
            extra = f" ({self.postfix})" if self.postfix else ""
            log.info("%s: %d%s steps in %.1f s%s", self.desc, self.n, of,
                     time.perf_counter() - self.start, extra)


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr when stderr is a terminal (stdout stays for tables and
    paths); in a log, one line when the stage ends (:class:`_StageLog`); nothing with ``-q``."""
    if _quiet or not sys.stderr.isatty():
        return _StageLog(iterable, **kwargs)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = False) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``; shuffled with ``generator`` when asked."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """Raise NonFiniteError when ``t`` holds NaN or infinity."""
    if not torch.isfinite(t).all():
        raise NonFiniteError(
            f"{what} produced NaN or infinite values. Lower the learning rate or check the "
            f"inputs; nothing was recorded."
        )
    return t
