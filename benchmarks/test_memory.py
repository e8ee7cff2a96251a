"""Peak resident memory of a grid at n and at 10 n images of an ImageNet-format folder at 299 px
(docs/performance.md: 250 and 2,500, i.e. 0.27 and 2.7 GB per float32 copy of the slice).
The slice and its
adversarial sets stream from disk (``$BENCH_STREAM_BYTES=0`` forces it at both sizes), so the
peak must not grow with n (target: at most 1.5x). Each grid runs in a fresh process, so each
peak is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10


def imagenet_folder(root: Path, val: int, train: int = 20, size: int = 342) -> Path:
    """``root/imagenet/{train,val}/<wnid>/*.JPEG``: smooth random images (JPEG-sized like
    photographs), spread over CLASSES class folders."""
    rng = np.random.default_rng(0)
    for split, count in (("val", val), ("train", train)):
        for i in range(count):
            folder = root / "imagenet" / split / f"n{i % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size, size), Image.BILINEAR)
            img.save(folder / f"{split}_{i:06d}.JPEG", quality=90)
    return root


def _grid(root: Path, n: int, work: Path, stream: str) -> dict[str, float]:
    env = {**os.environ, "BENCH_STREAM_BYTES": stream, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "benchmarks._rss_child", str(root), str(n),
                          str(work / "cache"), str(work / f"r{n}-{stream}.sqlite")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_n(report, scratch: Path) -> None:  # noqa: ANN001
    n = 8 if report.tiny else 250
    root = imagenet_folder(scratch / "data", 10 * n)
    small = _grid(root, n, scratch, "0")
    large = _grid(root, 10 * n, scratch, "0")
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    report.ratio(f"peak RSS, {10 * n} / {n} ImageNet 299px images (streamed)", ratio,
                 "<= 1.5", ratio <= 1.5,
                 f"{small['peak_rss_mib']:.0f} MiB at n={n} ({small['wall_s']} s), "
                 f"{large['peak_rss_mib']:.0f} MiB at n={10 * n} ({large['wall_s']} s); "
                 f"slice {10 * n * 3 * 299 * 299 * 4 / 2**30:.1f} GiB per float32 copy")
    assert small["cells"] == large["cells"] == 8
