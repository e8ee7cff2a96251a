"""Shared fixtures: an isolated cache per test session, the shared MNIST data root, tiny models,
the contract kit's workbenches, and throwaway plugins registered for one test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.registry import Registry
from bench.testing import AttackBench, DefenseBench, registered
from bench.testing.tiny import TinyNet

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data_root() -> Path:
    """``$BENCH_DATA_ROOT`` when set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("BENCH_DATA_ROOT")
    return Path(env) if env else SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never read or write the user's cache: a fresh one for the whole session."""
    path = tmp_path_factory.mktemp("bench-cache")
    old = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BENCH_CACHE_DIR", None)
    else:
        os.environ["BENCH_CACHE_DIR"] = old


@pytest.fixture
def mnist_root() -> Path:
    """The real MNIST files. Missing, they skip the test on a developer's machine but fail it
    under CI (``$CI`` set), which must have them: a skipped end-to-end test proves nothing."""
    root = shared_data_root()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        message = f"MNIST files not found under {root} (set BENCH_DATA_ROOT)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must have them")
        pytest.skip(message)
    return root


@pytest.fixture(scope="module")
def defense_bench(tmp_path_factory: pytest.TempPathFactory) -> DefenseBench:
    """The contract kit's defenses (:mod:`bench.testing`), fitted on first use into a fresh
    cache: one per test module."""
    return DefenseBench(tmp_path_factory.mktemp("bench-check"))


@pytest.fixture(scope="module")
def attack_bench() -> AttackBench:
    """The contract kit's tiny models and data for attacks."""
    return AttackBench()


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., str]]:
    """``register_plugin(registry, name, builder, **overrides)`` adds a throwaway plugin for one
    test and returns its name; every registry it touched is restored after the test."""
    with contextlib.ExitStack() as stack:

        def add(registry: Registry[Any], name: str, builder: Callable[..., Any],
                **overrides: Any) -> str:
            return stack.enter_context(registered(registry, name, builder, **overrides))

        yield add


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
