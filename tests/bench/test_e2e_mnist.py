"""Slow end-to-end run on the real MNIST files: the physics the HGD paper reports, in small.

Undefended PGD-100 is far below FGSM; under the oblivious threat the logit-guided denoiser keeps
far more accuracy than no defense; under the whitebox threat it loses most of that advantage.
The budgets are shrunk (one classifier epoch on 20,000 images, a 1,500-image denoiser training
set, 200 test images) so this runs in a few minutes on 2 CPU cores, from an empty cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cache import Cache
from bench.config import RunConfig
from bench.executors import run_grid
from bench.report import leaderboard
from bench.store import Store


@pytest.mark.slow
def test_mnist_physics_on_a_small_slice(mnist_root: Path, tmp_path: Path) -> None:
    cfg = RunConfig(datasets=("mnist",), defenses=("none", "dunet", "lgd"),
                    attacks=("fgsm", "pgd100"), threats=("oblivious", "whitebox"), eps=(0.2,),
                    n=200, data_root=str(mnist_root),
                    model_opts={"epochs": 1, "train_images": 20000},
                    fit_images=1500, defense_opts={"epochs": 4})
    store = Store(tmp_path / "r.sqlite")
    run_grid(cfg, store, Cache(tmp_path / "cache"))
    df = store.frame()
    assert len(df) == 3 * 2 * 2

    def acc(defense: str, attack: str, threat: str) -> float:
        row = df[(df.defense == defense) & (df.attack == attack) & (df.threat == threat)]
        assert len(row) == 1
        return float(row.robust_acc.iloc[0])

    print(leaderboard(df, baseline="none").to_string())  # shown by pytest on failure
    clean = float(df[df.defense == "none"].clean_acc.iloc[0])
    assert clean > 0.9
    assert acc("none", "pgd100", "oblivious") < acc("none", "fgsm", "oblivious") - 0.1
    assert acc("none", "pgd100", "oblivious") < 0.3
    lgd_obl = acc("lgd", "pgd100", "oblivious")
    assert lgd_obl > acc("none", "pgd100", "oblivious") + 0.4
    assert acc("lgd", "pgd100", "whitebox") < lgd_obl - 0.3
    assert float(df[df.defense == "lgd"].clean_acc.iloc[0]) > clean - 0.1
    wide = leaderboard(df, baseline="none")
    assert list(wide.defense) == ["none", "dunet", "lgd"]
    assert df[df.defense != "none"].denoise_loss.notna().all()
