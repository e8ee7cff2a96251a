"""What every layer may use: device choice, memory checks, RNG isolation and seeding, progress
bars, index batches and the finite-value check."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
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
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu or cuda.") from exc


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr (stdout stays for tables and paths)."""
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
