"""The Python API: ``bench.evaluate(model, dataset=..., ...)`` on one's own module, exactly the
cells ``bench run`` stores."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bench
from bench.api import weights_digest
from bench.config import RunConfig
from bench.errors import BenchError
from bench.executors import run_grid
from bench.registry import DEFENSES, MODELS
from bench.store import open_store


class Flat(nn.Module):
    """A linear classifier of 1 x 28 x 28 images (logits out), deterministic weights."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Smooth(nn.Module):
    """A 3 x 3 average (a preprocessing defense: images in, images in [0,1] out)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).clamp(0, 1)


def test_a_registered_name_stores_the_cells_bench_run_stores(tmp_path: Path) -> None:
    result = bench.evaluate("cnn", dataset="digits", attack="fgsm", n=30, defense="bitdepth",
                            store=tmp_path / "api.sqlite")
    store = open_store(tmp_path / "cli.sqlite")
    hashes = run_grid(RunConfig(defenses=("bitdepth",), attacks=("fgsm",), n=30), store)
    assert sorted(result.cells["config_hash"]) == sorted(hashes)
    cli = store.frame(hashes).set_index("config_hash")
    for c in result.cells.itertuples():
        assert np.array_equal(c.robust_correct, cli.loc[c.config_hash, "robust_correct"])


def test_a_module_is_evaluated_with_a_module_defense(tmp_path: Path) -> None:
    net, smooth = Flat(), Smooth()
    net.train()
    result = bench.evaluate(net, dataset="digits", attack="fgsm", eps=[0.1, 0.2], n=40,
                            defense=smooth, threat="whitebox", store=tmp_path / "s.sqlite")
    assert net.training  # the caller's mode is restored
    defenses = list(dict.fromkeys(result.cells["defense"]))
    label = f"smooth-{weights_digest(smooth)[:8]}"
    assert sorted(defenses) == sorted(["none", label])
    assert set(result.cells["model"]) == {"flat"}
    # the model's identity is a digest of its weights
    digest = {c["classifier"] for c in result.cells["config"]}
    assert len(digest) == 1
    # the headline is the per-image worst case over the row's cells at each eps
    for d in defenses:
        cells = result.cells[result.cells["defense"] == d]
        for eps in (0.1, 0.2):
            rows = cells[np.isclose(cells["eps"], eps)]
            worst = np.logical_and.reduce([np.asarray(r) for r in rows["robust_correct"]])
            assert result.headlines[d][eps] == pytest.approx(100 * worst.mean(), abs=0.01)
            assert np.array_equal(result.per_image[(d, f"fgsm/whitebox@{eps:g}")], rows[
                "robust_correct"].iloc[0].astype(np.uint8))
    assert result.headline == result.headlines[label]
    assert "| digits | flat |" in str(result)
    assert label not in DEFENSES and "flat" not in MODELS  # nothing left registered
    # other weights are another classifier: other cells
    again = bench.evaluate(Flat(seed=1), dataset="digits", attack="fgsm", eps=0.1, n=40,
                           threat="whitebox", store=tmp_path / "s.sqlite")
    assert {c["classifier"] for c in again.cells["config"]}.isdisjoint(digest)


class ThreeChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


class Scaled(Flat):
    def __init__(self, scale: float, classes: int = 10) -> None:
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(784, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * self.scale


@pytest.mark.parametrize(("model", "kwargs", "message"), [
    (ThreeChannels(), {}, r"failed on digits test images \(4 x 1 x 28 x 28.*RuntimeError"),
    (Scaled(1.0, classes=7), {}, r"returned \(4, 7\) .* logits of shape \(4, 10\)"),
    (Scaled(float("nan")), {}, "NaN or infinite logits"),
    (Flat().to("meta"), {"device": "cpu"}, "is on meta but the run is on cpu"),
    (Flat(), {"name": "cnn"}, "model name 'cnn' is taken"),
    (Flat(), {"name": "My Net"}, "name='My Net'"),
    (Flat(), {"models": ["cnn"]}, "not models="),
    (Flat(), {"defense": 3}, "defense must be a registered name or an nn.Module"),
    ("cnn", {"attack": "pdg10"}, "Unknown attack 'pdg10'. Did you mean 'pgd10'"),
])
def test_bad_input_is_one_line(model: nn.Module | str, kwargs: dict, message: str,
                               tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=message) as err:
        bench.evaluate(model, dataset="digits", **{"attack": "fgsm", "n": 10,
                                                   "store": tmp_path / "s.sqlite", **kwargs})
    assert "\n" not in str(err.value)
    assert "flat" not in MODELS and "scaled" not in MODELS


TWIN = '''
"""The registered twin of the script's model: the same architecture and weights."""
from torch import nn
import torch
from bench.api import ModuleClassifier
from bench.registry import register_model


@register_model("mlp")
class Twin(ModuleClassifier):
    def __init__(self, input_shape=(1, 28, 28), num_classes=10):
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        net.load_state_dict(torch.load("{weights}", weights_only=True))
        super().__init__(net, input_shape, num_classes)
'''

SCRIPT = '''
import bench, torch
from torch import nn
from bench.data import get_dataset
x, y = get_dataset("mnist").tensors("train", 2000); torch.manual_seed(0)
net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
for b in [*range(0, 2000, 100)] * 3:
    opt.zero_grad(); nn.functional.cross_entropy(net(x[b:b+100]), y[b:b+100]).backward(); opt.step()
result = bench.evaluate(net, dataset="mnist", eps=0.1, attack="adaptive", n=12, name="mlp")
print(result.headline)
'''
# what the test adds to the script: the weights for the twin, the cells to compare
HANDOVER = '''
torch.save(net.state_dict(), "weights.pt"); result.cells.to_pickle("cells.pkl")
'''


@pytest.mark.slow
def test_a_ten_line_script_matches_bench_run_on_its_registered_twin(
        tmp_path: Path, mnist_root: Path) -> None:
    """The API's acceptance: a script of at most ten lines trains its own module on MNIST and
    prints the adaptive headline; ``bench run`` on a registered twin (same architecture, same
    weights, loaded from a plugin file) stores the same per-image flags."""
    import pandas as pd

    script = SCRIPT.strip()
    assert len(script.splitlines()) <= 10
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_DATA_ROOT": str(mnist_root)}
    out = subprocess.run([sys.executable, "-c", script + HANDOVER], cwd=tmp_path, env=env,
                         text=True, capture_output=True, timeout=900)
    assert out.returncode == 0, out.stderr
    headline = ast.literal_eval(out.stdout.strip().splitlines()[-1])  # e.g. {0.1: 12.5}
    assert set(headline) == {0.1}
    (tmp_path / "twin.py").write_text(TWIN.format(weights=tmp_path / "weights.pt"))
    run = subprocess.run([sys.executable, "-m", "bench", "run", "--plugins", "twin.py",
                          "--dataset", "mnist", "--model", "mlp", "--attack", "adaptive",
                          "--eps", "0.1", "--n", "12", "--results", "twin.sqlite"],
                         cwd=tmp_path, env=env, text=True, capture_output=True, timeout=900)
    assert run.returncode == 0, run.stderr
    api = pd.read_pickle(tmp_path / "cells.pkl")
    cli = open_store(tmp_path / "twin.sqlite").frame()
    assert len(api) == len(cli) == 1
    for k in ("clean_correct", "robust_correct"):
        assert np.array_equal(api[k].iloc[0], cli[k].iloc[0])
    # same weights, same name and recipe: the twin is the same classifier, the same cell
    assert api["config_hash"].iloc[0] == cli["config_hash"].iloc[0]
    assert headline[0.1] == pytest.approx(100 * cli["robust_correct"].iloc[0].mean(), abs=0.01)
