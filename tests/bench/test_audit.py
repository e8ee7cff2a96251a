"""``bench audit``: the cells the checks need go through the runner into the store, the stored
checks flag shattered gradients, undeclared randomness and planted examples the suite's
gradient attacks miss, and the checklist prints."""

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


PLANTED = ["--planted-n", "12", "--planted-steps", "5"]  # the planted-example test, small
NAMES = {"test-masked": MaskedQuantize, "test-bpda": BpdaQuantize, "test-undeclared": Undeclared}


@pytest.fixture(autouse=True)
def _registered(register_plugin: Callable[..., str]) -> None:
    for name, cls in NAMES.items():
        register_plugin(DEFENSES, name, cls)


def test_audit_flags_masked_gradients_and_undeclared_randomness(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "a.sqlite"
    code = main(["-q", "audit", "--defense", ",".join(NAMES), "--n", "40", "--steps", "5",
                 "--n-queries", "20", "--model-opt", "epochs=1", "--results", str(db),
                 *PLANTED])
    out = capsys.readouterr().out
    assert code == 0
    blocks = {b.splitlines()[0]: b for b in out.split("\n\n")[1:]}
    assert "[FLAG] ZG" in blocks["digits/cnn/test-masked"]
    assert "of 40 images" in blocks["digits/cnn/test-masked"].split("[FLAG] ZG")[1]
    assert "[pass] ZG" in blocks["digits/cnn/test-bpda"]
    assert "[FLAG] ND" in blocks["digits/cnn/test-undeclared"]
    assert "[pass] ND" in blocks["digits/cnn/test-masked"]
    # the audit runs every cell the checks need; a forward pass that changes at every call
    # (test-undeclared) cannot carry a planted example: too few tasks to decide PT
    assert [line for line in out.splitlines() if "[n/a ]" in line] == [
        "  [n/a ] PT planted examples not found (0 informative planted tasks of 12 images, "
        "needs 10: raise --planted-n)"]
    assert "[pass] ZG" in blocks["digits/cnn/none"] and "[pass] ND" in blocks["digits/cnn/none"]
    # the planted-example test: the suite finds every planted example through the defense's
    # own gradient and through BPDA, none through the masked gradient
    assert "[FLAG] PT" in blocks["digits/cnn/test-masked"]
    assert "found an adversarial example for 0 of 1" in blocks["digits/cnn/test-masked"]
    for row in ("none", "test-bpda"):
        assert "[pass] PT" in blocks[f"digits/cnn/{row}"]
        assert "images (100.0%) where one is planted" in blocks[f"digits/cnn/{row}"]
    store = Store(db)
    frame = store.frame()
    assert set(frame["threat"]) == {"oblivious", "whitebox", "transfer"}
    assert {1.0, 0.1, 0.2, 0.4} <= set(frame["eps"])
    assert len(store.checks()) == 4  # per defense row (none included): three checks
    assert all(set(c) == {"zero_gradients", "nondeterministic", "planted"}
               for c in store.checks().values())
    # rerunning is a no-op for the store: every cell and check is reused
    again = main(["-q", "audit", "--defense", ",".join(NAMES), "--n", "40", "--steps", "5",
                  "--n-queries", "20", "--model-opt", "epochs=1", "--results", str(db),
                  *PLANTED])
    assert again == 0 and len(Store(db).frame()) == len(frame)
    assert capsys.readouterr().out == out
    # another planted-example budget remeasures that check (and only it) and replaces it
    before = Store(db).checks()
    more = main(["-q", "audit", "--defense", "none", "--n", "40", "--steps", "5", "--n-queries",
                 "20", "--model-opt", "epochs=1", "--results", str(db), "--planted-n", "14",
                 "--planted-steps", "5"])
    after = Store(db).checks()
    assert more == 0 and len(after) == 4
    changed = {row for row in after if after[row]["planted"] != before[row]["planted"]}
    assert len(changed) == 1 and after[changed.pop()]["planted"]["n"] == 14
    assert all(after[row]["zero_gradients"] == before[row]["zero_gradients"] for row in after)
