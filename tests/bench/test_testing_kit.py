"""The contract kit (:mod:`bench.testing`, ``python -m bench check``) judges plugins it has never
seen: a throwaway plugin package written outside the repository, with a correct trainable
defense and a correct attack, a defense whose ``fit`` does nothing and an attack that returns
``x``. The correct ones pass every check; each broken one fails exactly the check written for
it. In process first (fast), then as a plugin's author runs it: the package found through its
entry points, both commands in a subprocess from a folder outside the repository."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.check import run as run_checks
from bench.cli import main
from bench.registry import ATTACKS, DEFENSES
from bench.testing import ATTACK_CHECKS, DEFENSE_CHECKS, restored

PLUGIN = '''\
"""A throwaway plugin package for the contract kit's tests: two defenses, two attacks (FGSM:
Goodfellow et al., https://arxiv.org/abs/1412.6572).

Arguments:
    eps: L-inf radius on the [0,1] scale. targeted: None, random or least-likely.

Examples: ``python -m bench run --attack kit-fgsm --eps 0.1``,
``python -m bench run --defense kit-mix --attack fgsm``
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.attack import Attack
from bench.defense import Defense
from bench.registry import register_attack, register_defense


@register_defense("kit-mix")
class Mix(Defense):
    """x + a learned 1x1 convolution of x, trained to map noisy images back to clean ones.

    Args:
        input_shape, num_classes: the dataset's. epochs: training epochs (10 Adam steps each).
    """

    needs_training = True

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 epochs: int = 5) -> None:
        super().__init__(input_shape, num_classes)
        self.epochs = epochs
        self.mix = nn.Conv2d(self.input_shape[0], self.input_shape[0], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.mix(x)).clamp(0, 1)

    def fit(self, ctx):
        x, _ = ctx.train_tensors()
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        for _ in range(10 * self.epochs):
            noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
            loss = self.denoising_loss(self(noisy), x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {"final_loss": loss.item()}


@register_defense("kit-lazy")
class Lazy(Mix):
    """The same defense with a ``fit`` that trains nothing (the kit must catch it)."""

    def fit(self, ctx):
        return {}


@register_attack("kit-fgsm")
class FGSM(Attack):
    """One signed-gradient step of size eps.

    Args:
        eps: L-inf radius. targeted: None, random or least-likely.
    """

    def step_size(self) -> float:
        return self.eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        if self.targeted:
            loss = -F.cross_entropy(model(x), self.target_labels(model, x.detach(), y))
        else:
            loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
        return (x + self.eps * grad.sign()).clamp(0, 1).detach()


@register_attack("kit-return-x")
class ReturnX(FGSM):
    """Returns the clean images (the kit must catch it).

    Args:
        eps: L-inf radius.
    """

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.clone()
'''
GOOD, BROKEN = ("kit-mix", "kit-fgsm"), {"kit-lazy": "fit-lowers-loss", "kit-return-x": "fools"}
NAMES = [*GOOD, *BROKEN]


def write_package(root: Path) -> Path:
    """``root/site/kit_plugin/__init__.py`` and a ``kit_plugin-0.1.dist-info`` naming it under
    both entry-point groups: what ``pip install`` leaves in site-packages. Returns the folder to
    put on the path."""
    site = root / "site"
    (site / "kit_plugin").mkdir(parents=True)
    (site / "kit_plugin" / "__init__.py").write_text(PLUGIN)
    info = site / "kit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.defenses]\nkit = kit_plugin\n\n"
                                           "[bench.attacks]\nkit = kit_plugin\n")
    return site


def failures(output: str) -> dict[str, str]:
    """plugin -> the check it failed, from ``bench check`` lines (``FAIL KIND NAME CHECK: ...``)."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("FAIL "):
            _, _, name, check = line.split(":")[0].split()
            assert name not in out, f"{name} failed more than one check:\n{output}"
            out[name] = check
    return out


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[None]:
    """The throwaway package imported in this process, registered for one test only."""
    path = tmp_path / "kit_plugin.py"
    path.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("kit_plugin", path)
    module = importlib.util.module_from_spec(spec)
    with restored(DEFENSES, ATTACKS), pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "kit_plugin", module)  # where its docstrings are looked up
        spec.loader.exec_module(module)
        yield
    assert "kit-mix" not in DEFENSES and "kit-fgsm" not in ATTACKS


def test_the_kit_passes_correct_plugins_and_fails_each_broken_one_once(plugin: None) -> None:
    out = io.StringIO()
    code = run_checks(NAMES, out)
    text = out.getvalue()
    assert code == 1
    assert failures(text) == BROKEN, text
    assert "PASS defense kit-mix fit-lowers-loss" in text and "PASS attack kit-fgsm fools" in text
    assert "PASS defense kit-lazy weights-cached" in text  # only its own check catches it


def test_bench_check_exits_0_when_all_pass_and_2_on_an_unknown_name(
        plugin: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "check", "kit-fgsm"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.splitlines()[-1].endswith("skipped")
    assert main(["-q", "check", "kit-fgsn"]) == 2
    err = capsys.readouterr().err
    assert "Unknown defense or attack 'kit-fgsn'. Did you mean 'kit-fgsm'" in err
    assert main(["check", "--list"]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert listed == [["defense", c.name] for c in DEFENSE_CHECKS] + \
        [["attack", c.name] for c in ATTACK_CHECKS]


def _env(site: Path, tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(site), "BENCH_CACHE_DIR": str(tmp / "cache"),
           "OMP_NUM_THREADS": "1", **extra}
    env.pop("PYTEST_ADDOPTS", None)
    return env


@pytest.mark.slow
def test_an_installed_plugin_is_checked_outside_the_repository(tmp_path: Path) -> None:
    """What the README tells a plugin's author to run, run from a folder outside the
    repository on a package found only through its entry points."""
    site, work = write_package(tmp_path), tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "bench", "-q", "check", *NAMES], cwd=work,
                          env=_env(site, tmp_path), capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert failures(proc.stdout) == BROKEN, proc.stdout

    pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs",
                  "bench.testing"]
    good = subprocess.run(pytest_run, cwd=work, env=_env(site, tmp_path,
                                                        BENCH_CHECK=",".join(GOOD)),
                          capture_output=True, text=True, timeout=600, check=False)
    assert good.returncode == 0, good.stdout[-3000:]
    bad = subprocess.run(pytest_run, cwd=work, env=_env(site, tmp_path,
                                                       BENCH_CHECK=",".join(BROKEN)),
                         capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode == 1, bad.stdout[-3000:]
    failed = sorted(line.split("::")[-1].split()[0] for line in bad.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["test_attack_contract[kit-return-x-fools]",
                      "test_defense_contract[kit-lazy-fit-lowers-loss]"], bad.stdout[-3000:]
