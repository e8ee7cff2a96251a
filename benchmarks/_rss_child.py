"""One grid on an ImageNet-format folder in a fresh process; prints its peak resident set.

``python -m benchmarks._rss_child ROOT N CACHE RESULTS``: the undefended baseline and 1-bit
bitdepth against FGSM and PGD-10, oblivious and whitebox, on the first N validation images at
299 px, with a small registered classifier (its cost per image is negligible, so the memory is the
harness's). Prints one JSON line: n, peak RSS (MiB, ``ru_maxrss``), wall seconds, cells.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

from bench.models.zoo import Classifier
from bench.registry import register_model

NAME = "rss-tiny299"


@register_model(NAME)
class Tiny299(Classifier):
    """An 8x8 stride-8 convolution, pooled: a 299 px classifier that costs next to nothing."""

    recipe = {"epochs": 1, "lr": 1e-3, "batch_size": 32}

    def __init__(self, input_shape: Sequence[int] = (3, 299, 299), num_classes: int = 1000
                 ) -> None:
        super().__init__(input_shape, num_classes)
        self.features = nn.Sequential(nn.Conv2d(input_shape[0], 8, 8, stride=8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))


def main(argv: list[str]) -> int:
    from bench.cache import Cache
    from bench.config import RunConfig
    from bench.executors import run_grid
    from bench.store import Store

    root, n, cache, results = argv[0], int(argv[1]), argv[2], argv[3]
    torch.set_num_threads(1)
    cfg = RunConfig(datasets=("imagenet",), models=(NAME,), defenses=("none", "bitdepth"),
                    attacks=("fgsm", "pgd10"), eps=(4 / 255,), n=n, data_root=root,
                    batch_size=50, defense_opts={"bits": 1},
                    # The dataset's other models are built (their keys name the grid) but never
                    # used here: no weights for them.
                    model_opts={"timm:inception_v3.pretrained": False,
                                "timm:resnet50.pretrained": False})
    t0 = time.perf_counter()
    hashes = run_grid(cfg, Store(results), Cache(cache))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"n": n, "peak_rss_mib": round(peak, 1),
                      "wall_s": round(time.perf_counter() - t0, 1), "cells": len(hashes)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
