"""GPU paths: numeric precision scopes, host-to-device copies, memory format, CUDA determinism,
and ``--batch-size auto``. Everything here runs (and is tested) on CPU too, where it reduces to
what the harness did before: fp32, plain copies, the default memory format.

* **Precision** (:func:`precision_scope`): ``fp32`` is strict IEEE float32, TF32 off on CUDA
  (PyTorch's default runs cuDNN convolutions in TF32, a silent 10-bit mantissa); ``tf32`` allows
  TF32 matmuls and convolutions; ``bf16`` runs under ``torch.autocast`` in bfloat16 (weights,
  optimizer state and gradients w.r.t. inputs stay float32; no loss scaling is needed for
  bf16). Defenses' training uses ``--train-precision`` (recorded in their weight key when not
  fp32), attacks ``--attack-precision`` (recorded in the cell's configuration and its hash when
  not fp32); evaluation is always fp32.
* **Copies** (:func:`to_device`): a CPU batch bound for CUDA goes through pinned (page-locked)
  memory with a non-blocking copy, so the copy overlaps the work queued before it.
* **Memory format**: ``channels_last`` for 4-D weights and batches when asked (``--channels-last``;
  faster convolutions with tensor cores). Opt-in because a plugin that calls ``.view`` on an
  activation fails on a channels-last tensor.
* **Determinism** (:func:`configure_determinism`): on CUDA, cuDNN's autotuner off, deterministic
  cuDNN and cuBLAS algorithms, ``torch.use_deterministic_algorithms(True, warn_only=True)``;
  the operations that have no deterministic CUDA implementation are recorded in the row
  (:class:`NondeterminismLog`) instead of failing the run.
* **Batch size** (:func:`probe_batch_size`): the batch with the best attack throughput among
  those that fit, found by doubling with out-of-memory recovery (see its docstring).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import check_precision
from bench.errors import ConfigError

AUTO = "auto"
MIN_BATCH = 8
MAX_BATCH = 4096  # no batch above this is tried
CPU_MAX_BATCH = 1024  # CPU memory is not probed by an allocation that can fail: a lower cap
MEMORY_SHARE = 0.85  # a CUDA batch whose peak exceeds this share of the free memory is not used
PAST_PEAK = 0.7  # doubling stops once throughput falls below this share of the best so far


def _tf32(enabled: bool | None = None) -> tuple[str, str] | None:
    """Set (``enabled`` not None) and return the previous TF32 settings of CUDA matmuls and cuDNN
    convolutions, through the fp32_precision API where torch has it (mixing it with the legacy
    ``allow_tf32`` flags is an error in torch >= 2.9)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):
        before = (matmul.fp32_precision, conv.conv.fp32_precision)
        if enabled is not None:
            value = "tf32" if enabled else "ieee"
            matmul.fp32_precision, conv.conv.fp32_precision = value, value
        return before
    before = (str(matmul.allow_tf32), str(conv.allow_tf32))  # torch < 2.9
    if enabled is not None:
        matmul.allow_tf32, conv.allow_tf32 = enabled, enabled
    return before


def _restore_tf32(before: tuple[str, str]) -> None:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):
        matmul.fp32_precision, conv.conv.fp32_precision = before
    else:
        matmul.allow_tf32, conv.allow_tf32 = before[0] == "True", before[1] == "True"


@contextlib.contextmanager
def precision_scope(device: torch.device, precision: str = "fp32",
                    training: bool = False) -> Iterator[None]:
    """Run the block at ``precision`` on ``device`` (see the module docstring); the TF32 and
    autocast settings around it are restored on exit. ``fp32`` inside a ``bf16`` scope turns
    autocast off (what a classifier trained lazily inside a defense's bf16 fit needs: its
    weight key says fp32).

    ``training``: the block updates weights (a whole ``fit``). Autocast's cache of bfloat16
    weight casts is then off: it lives as long as the outermost autocast block, so inside one
    that spans optimizer steps every forward pass would use the weights of the first step while
    the float32 weights move (found by measuring: a DAE fitted that way scored 6% clean)."""
    check_precision(precision, "precision")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"bf16 autocast is supported here on CPU and CUDA, not on "
                          f"{device.type}: use fp32.")
    before = _tf32(precision == "tf32") if device.type == "cuda" else None
    try:
        kind = device.type if device.type in ("cpu", "cuda") else "cpu"
        with torch.autocast(device_type=kind, dtype=torch.bfloat16,
                            enabled=precision == "bf16", cache_enabled=not training):
            yield
    finally:
        if before is not None:
            _restore_tf32(before)


def to_device(t: torch.Tensor, device: torch.device, channels_last: bool = False
              ) -> torch.Tensor:
    """``t`` on ``device``: from CPU to CUDA through pinned memory with a non-blocking copy
    (PyTorch's caching host allocator keeps the pinned buffer alive until the copy is done);
    4-D image batches in channels-last order when asked."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    else:
        t = t.to(device)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def to_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """``module`` with its 4-D weights in channels-last order when asked (in place)."""
    return module.to(memory_format=torch.channels_last) if channels_last else module


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to be deterministic (CUDA >= 10.2)


def configure_determinism(device: torch.device, deterministic: bool = True) -> dict[str, Any]:
    """On CUDA, with ``deterministic``: seeded runs repeat bit for bit (cuDNN's autotuner off,
    deterministic cuDNN, ``CUBLAS_WORKSPACE_CONFIG`` set when unset, and
    ``torch.use_deterministic_algorithms(True, warn_only=True)``). Strict fp32 (TF32 off) either
    way, which :func:`precision_scope` also enforces around attacks and evaluation. Call it
    before the first CUDA operation of the process; nothing changes on CPU. Returns what was
    set, for the row."""
    if device.type != "cuda":
        return {"deterministic": deterministic}
    import os

    _tf32(False)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return {"deterministic": deterministic,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


_NONDETERMINISTIC = re.compile(r"^(\S+) does not have a deterministic implementation")
_PASSED_ON: dict[Any, Any] = {}  # warnings' "once per location" registry for those passed on


@dataclass
class NondeterminismLog:
    """A context that records the operations torch reports as lacking a deterministic
    implementation (``warn_only`` mode), so that a row says which of its numbers may not repeat
    bit for bit; every other warning is passed on (shown once per location, as usual).
    Inactive (``active=False``: where torch's deterministic mode is off), it does nothing."""

    ops: list[str] = field(default_factory=list)
    active: bool = True

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            m = _NONDETERMINISTIC.match(str(w.message))
            if m:
                if m.group(1) not in self.ops:
                    self.ops.append(m.group(1))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                       registry=_PASSED_ON)


def device_name(device: torch.device) -> str:
    """What the device is (a CUDA GPU's product name; ``cpu`` with its torch thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} x{torch.get_num_threads()} threads"


def _oom_types() -> tuple[type[BaseException], ...]:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom,) if oom is not None else ()


def candidates(n: int, device: torch.device, cap: int | None = None) -> list[int]:
    """Batch sizes tried by doubling from :data:`MIN_BATCH`, up to the first that covers the
    whole slice of ``n`` images, and at most ``cap`` (:data:`MAX_BATCH`; :data:`CPU_MAX_BATCH`
    on CPU)."""
    cap = cap or (MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH)
    top = min(cap, 2 ** math.ceil(math.log2(max(n, 1))))
    out, b = [], MIN_BATCH
    while b < top:
        out.append(b)
        b *= 2
    return [*out, top]


def attack_step(model: nn.Module, shape: tuple[int, ...], classes: int, device: torch.device,
                precision: str = "fp32", channels_last: bool = False,
                ) -> Callable[[int], None]:
    """One step of a gradient attack (forward, loss, gradient w.r.t. the inputs) through
    ``model`` at a given batch size, on random images: what every PGD iteration costs. The
    gradient is taken with ``torch.autograd.grad`` so that no weight accumulates ``.grad``."""
    gen = torch.Generator().manual_seed(0)

    def step(batch: int) -> None:
        x = torch.rand(batch, *shape, generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = to_device(x, device, channels_last).requires_grad_(True)
        with precision_scope(device, precision):
            loss = F.cross_entropy(model(x), to_device(y, device))
        (grad,) = torch.autograd.grad(loss, x)
        del grad

    return step


def probe_batch_size(steps: dict[str, Callable[[int], None]], sizes: list[int],
                     device: torch.device, timer: Callable[[], float] = time.perf_counter,
                     min_time: float = 0.2, reps: int = 3) -> dict[str, Any]:
    """The batch size of the best attack throughput (images per second) among ``sizes`` that
    fit for every pipeline in ``steps`` (name -> :func:`attack_step`), and the measurements.

    For each pipeline, sizes are tried by doubling: one warm-up step, then at least ``reps``
    steps and ``min_time`` seconds are timed. Doubling stops at an out-of-memory error (caught:
    the cache is emptied and the sizes below stay usable), when the peak memory of a CUDA batch
    passes :data:`MEMORY_SHARE` of the memory that was free (the next doubling would not fit),
    or when the throughput falls below :data:`PAST_PEAK` of the best so far. The chosen size is
    the one with the best throughput of the slowest pipeline at that size, among sizes every
    pipeline ran: the heaviest pipeline decides what fits, and the throughput is that of the
    whole grid, not of one cell."""
    cuda = device.type == "cuda"
    table: dict[str, list[dict[str, Any]]] = {}
    for name, step in steps.items():
        rows: list[dict[str, Any]] = []
        best = 0.0
        for b in sizes:
            row: dict[str, Any] = {"batch": b}
            try:
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    free = torch.cuda.mem_get_info(device)[0]
                step(b)  # warm-up (allocator, kernels' first launch)
                if cuda:
                    torch.cuda.synchronize(device)
                count, t0 = 0, timer()
                while count < reps or timer() - t0 < min_time:
                    step(b)
                    count += 1
                if cuda:
                    torch.cuda.synchronize(device)
                elapsed = max(timer() - t0, 1e-9)
            except _oom_types():
                if cuda:
                    torch.cuda.empty_cache()
                row["oom"] = True
                rows.append(row)
                break
            row["images_per_s"] = round(b * count / elapsed, 3)
            if cuda:
                row["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
            rows.append(row)
            best = max(best, row["images_per_s"])
            if cuda and row["peak_bytes"] > MEMORY_SHARE * free:
                row["near_full"] = True
                break
            if row["images_per_s"] < PAST_PEAK * best:
                break
        table[name] = rows
    ran = [b for b in sizes
           if all(any(r["batch"] == b and "images_per_s" in r for r in rows)
                  for rows in table.values())]
    if not ran:
        raise ConfigError(f"--batch-size auto: not even a batch of {sizes[0]} fits on "
                          f"{device_name(device)} ({', '.join(table)}); pass a smaller "
                          f"--batch-size or use a device with more memory.")

    def slowest(b: int) -> float:
        return min(r["images_per_s"] for rows in table.values() for r in rows
                   if r["batch"] == b and "images_per_s" in r)

    chosen = max(ran, key=lambda b: (slowest(b), -b))
    return {"chosen": chosen, "images_per_s": slowest(chosen), "probe": table}
