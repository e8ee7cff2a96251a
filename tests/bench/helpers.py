"""Helpers shared by the bench tests: small dataset files in their exact on-disk formats."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_mnist(root: Path, split: str = "test", n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``: big-endian IDX headers
    (magic 2051 with N, 28, 28 for images; 2049 with N for labels), then the uint8 data."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images = np.random.default_rng(2).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) * 3 % 10).astype(np.uint8)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">4i", 2051, n, 28, 28) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">2i", 2049, n) + labels.tobytes())
    return images, labels
