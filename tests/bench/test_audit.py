"""``bench audit``: the cells the checks need go through the runner into the store, the two
stored checks flag shattered gradients and undeclared randomness, and the checklist prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.defense import Defense
from bench.registry import DEFENSES
from bench.store import Store


class MaskedQuantize(Defense):
    """Rounds to 5 grey levels but declares itself differentiable: its gradient is zero almost
    everywhere, the textbook shattered gradient (test only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 4).round() / 4


class BpdaQuantize(MaskedQuantize):
    """The same rounding, honestly declared non-differentiable: the attacker gets BPDA."""

    differentiable = False


class Undeclared(Defense):
    """Adds noise on every forward pass but declares ``randomized = False`` (test only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)


NAMES = {"test-masked": MaskedQuantize, "test-bpda": BpdaQuantize, "test-undeclared": Undeclared}


@pytest.fixture(autouse=True)
def _registered(register_plugin: Callable[..., str]) -> None:
    for name, cls in NAMES.items():
        register_plugin(DEFENSES, name, cls)


def test_audit_flags_masked_gradients_and_undeclared_randomness(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "a.sqlite"
    code = main(["-q", "audit", "--defense", ",".join(NAMES), "--n", "40", "--steps", "5",
                 "--n-queries", "20", "--model-opt", "epochs=1", "--results", str(db)])
    out = capsys.readouterr().out
    assert code == 0
    blocks = {b.splitlines()[0]: b for b in out.split("\n\n")[1:]}
    assert "[FLAG] ZG" in blocks["digits/cnn/test-masked"]
    assert "of 40 images" in blocks["digits/cnn/test-masked"].split("[FLAG] ZG")[1]
    assert "[pass] ZG" in blocks["digits/cnn/test-bpda"]
    assert "[FLAG] ND" in blocks["digits/cnn/test-undeclared"]
    assert "[pass] ND" in blocks["digits/cnn/test-masked"]
    assert "[n/a ]" not in out  # the audit runs every cell the checks need
    assert "[pass] ZG" in blocks["digits/cnn/none"] and "[pass] ND" in blocks["digits/cnn/none"]
    store = Store(db)
    frame = store.frame()
    assert set(frame["threat"]) == {"oblivious", "whitebox", "transfer"}
    assert {1.0, 0.1, 0.2, 0.4} <= set(frame["eps"])
    assert len(store.checks()) == 4  # two checks per defense row, none included
    # rerunning is a no-op for the store: every cell and check is reused
    again = main(["-q", "audit", "--defense", ",".join(NAMES), "--n", "40", "--steps", "5",
                  "--n-queries", "20", "--model-opt", "epochs=1", "--results", str(db)])
    assert again == 0 and len(Store(db).frame()) == len(frame)
    assert capsys.readouterr().out == out
