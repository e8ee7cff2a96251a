"""Shared fixtures: an isolated cache per test session, the shared MNIST data root, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


class TinyNet(torch.nn.Module):
    """A small differentiable classifier for contract tests (1x28x28 or 3x32x32 inputs)."""

    def __init__(self, channels: int = 1, size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, padding=1),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
