"""Attack suites, the transfer threat, EOT and repeated evaluation of randomized defenses, through
the real runner on the embedded digits data (small budgets)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.attack import Attack
from bench.cache import Cache
from bench.config import RunConfig
from bench.errors import BenchError, ConfigError
from bench.executors import run_grid
from bench.registry import ATTACKS, DEFENSES
from bench.session import Session
from bench.store import Store
from bench.threat import EOT, Threat, attacked_model, eot_draws
from tests.bench.randomized_defense import NAME as NOISY
from tests.bench.randomized_defense import NoisyDefense

SMALL = {"adaptive.steps": 3, "adaptive.restarts": 2, "adaptive.n_queries": 30}
N = 40


def _run(tmp: Path, **cfg: Any) -> Store:
    store = Store(tmp / "s.sqlite")
    base = {"datasets": ("digits",), "n": N, "model_opts": {"epochs": 1}}
    run_grid(RunConfig(**{**base, **cfg}), store, Cache(tmp / "cache"))
    return store


def test_suite_cell_records_who_broke_each_image_and_attacks_only_survivors(
        tmp_path: Path) -> None:
    store = _run(tmp_path, defenses=("none", "median"), attacks=("adaptive",),
                 attack_opts=SMALL, eps=(0.1,))
    df = store.frame()
    assert set(df["threat"]) == {"whitebox"} and len(df) == 2
    for row in df.itertuples(index=False):
        suite = row.metadata["suite"]
        first, members = suite["first_break"], suite["members"]
        assert [m["label"] for m in members] == ["apgd-ce", "apgd-dlr", "apgd-t", "pgd-restarts",
                                                 "square", "transfer", "noise"]
        assert members[5]["threat"] == "transfer" and members[0]["threat"] == "whitebox"
        # robust exactly where no member broke the image, and wrong-clean images are code 0
        assert list(row.robust_correct) == [f is None for f in first]
        assert [f == 0 for f in first] == list(~row.clean_correct)
        # each member attacks the previous member's survivors, and breaks what it records
        alive = int(row.clean_correct.sum())
        for k, m in enumerate(members, start=1):
            assert m["attacked"] == alive
            assert m["broken"] == sum(f == k for f in first)
            alive -= m["broken"]
        assert alive == int(row.robust_correct.sum())
        assert row.config["source"]["model"] == "cnn3x3"
    md = df[df["defense"] == "median"].iloc[0]
    assert md["bpda"] and md["metadata"]["suite"]["members"][0]["bpda"]
    assert not md["metadata"]["suite"]["members"][4]["bpda"]  # Square reads no gradient


def test_suite_on_a_bare_model_keeps_the_first_fooling_example() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    x = torch.rand(12, 1, 4, 4)
    y = model(x).argmax(1)
    suite = ATTACKS.get("adaptive").build(eps=0.3, steps=3, restarts=1, n_queries=20)
    x_adv = suite(model, x, y)  # in the eps-ball: Attack.__call__ validates every batch
    assert (model(x_adv).argmax(1) != y).float().mean() > 0.5


class OwnAttack(Attack):
    """A defense-specific attack (test only): flips every pixel by eps towards 1."""

    def perturb(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + self.eps).clamp(0, 1)


class WithOwnAttack(NoisyDefense):
    randomized = False
    adaptive_attacks = ("test-own-attack",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_defense_registers_its_own_attack_into_the_suite(
        tmp_path: Path, register_plugin: Callable[..., str]) -> None:
    register_plugin(ATTACKS, "test-own-attack", OwnAttack)
    name = register_plugin(DEFENSES, "test-with-own", WithOwnAttack)
    store = _run(tmp_path, defenses=(name,), attacks=("adaptive",), attack_opts=SMALL,
                 eps=(0.1,))
    rows = store.frame().set_index("defense")
    own = rows.loc[name, "metadata"]["suite"]["members"]
    assert own[0]["label"] == "test-own-attack" and own[0]["attacked"] > 0
    assert rows.loc["none", "metadata"]["suite"]["members"][0]["label"] == "apgd-ce"
    assert rows.loc[name, "config"]["suite"][0]["attack"] == "test-own-attack"


def test_transfer_cells_are_crafted_on_the_source_once_for_every_defense(
        tmp_path: Path) -> None:
    store = _run(tmp_path, defenses=("none", "median"), attacks=("pgd10",),
                 threats=("transfer",), eps=(0.2,))
    df = store.frame()
    assert len(df) == 2 and set(df["threat"]) == {"transfer"}
    assert {r["source"]["model"] for r in df["config"]} == {"cnn3x3"}
    cached = list((tmp_path / "cache" / "adversarial").glob("digits-cnn3x3-pgd10-*.safetensors"))
    assert len(cached) == 1  # one set, shared by both defenses
    none = df[df["defense"] == "none"].iloc[0]
    assert 0.0 < none["robust_acc"] < none["clean_acc"]  # it transfers, but not fully


def test_transfer_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is the target model itself"):
        _run(tmp_path, attacks=("fgsm",), threats=("transfer",), source_model="cnn")
    with pytest.raises(BenchError, match="Unknown model 'cnnn'. Did you mean 'cnn'"):
        _run(tmp_path, attacks=("fgsm",), threats=("transfer",), source_model="cnnn")
    with pytest.raises(ConfigError, match="add whitebox to --threat"):
        _run(tmp_path, attacks=("adaptive",), threats=("oblivious",))


class Flaky(NoisyDefense):
    """Randomized: on each forward pass an image is blanked with probability 1/2 (test only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand(len(x), 1, 1, 1) < 0.5).to(x.dtype)
        return x * keep


def test_randomized_defense_counts_an_image_only_when_every_draw_is_correct(
        tmp_path: Path, register_plugin: Callable[..., str]) -> None:
    name = register_plugin(DEFENSES, "test-flaky", Flaky)
    s = Session("digits", n=N, cache=Cache(tmp_path / "cache"), model_opts={"epochs": 1},
                eval_draws=6)
    d = s.defense(name)
    one = Session("digits", n=N, cache=Cache(tmp_path / "cache"), model_opts={"epochs": 1},
                  eval_draws=1)
    all_draws, _ = s.evaluate(d, s.test[0], seed=3)
    single, _ = one.evaluate(one.defense(name), one.test[0], seed=3)
    assert torch.equal(all_draws, s.evaluate(d, s.test[0], seed=3)[0])  # reproducible
    assert (all_draws <= single).all()  # draw 0 is the single-draw evaluation
    assert all_draws.float().mean() < 0.2 < single.float().mean()  # 1/64 vs 1/2 survive


def test_eot_averages_probabilities_over_draws() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    pipeline = torch.nn.Sequential(NoisyDefense((1, 4, 4), 3, sigma=0.5), net).eval()
    x = torch.rand(5, 1, 4, 4)
    torch.manual_seed(1)
    out = EOT(pipeline, 4)(x)
    torch.manual_seed(1)
    probs = torch.stack([torch.softmax(pipeline(x), 1) for _ in range(4)]).mean(0)
    assert torch.allclose(out.exp(), probs, atol=1e-6)
    assert torch.allclose(torch.softmax(out, 1), probs, atol=1e-6)
    with pytest.raises(ConfigError, match="--eot 20"):
        EOT(pipeline, 0)


def test_eot_applies_to_whitebox_gradient_attacks_on_randomized_defenses_only() -> None:
    noisy, plain = NoisyDefense(), WithOwnAttack()
    assert eot_draws(Threat.WHITEBOX, noisy, 20) == 20
    assert eot_draws(Threat.WHITEBOX, noisy, 20, gradient_free=True) == 1
    assert eot_draws(Threat.OBLIVIOUS, noisy, 20) == 1
    assert eot_draws(Threat.WHITEBOX, plain, 20) == 1
    net = torch.nn.Identity()
    model, target = attacked_model(Threat.WHITEBOX, net, noisy, eot=20)
    assert isinstance(model, EOT) and target.key.endswith(":eot20")
    model, target = attacked_model(Threat.TRANSFER, net, noisy, source=(net, "k1"))
    assert model is net and target.key == "source:k1"
    with pytest.raises(ConfigError, match="--source-model"):
        attacked_model(Threat.TRANSFER, net, noisy)


def test_eot_cells_record_their_draws_and_differ_from_single_draw_cells(
        tmp_path: Path, register_plugin: Callable[..., str]) -> None:
    register_plugin(DEFENSES, NOISY, NoisyDefense)
    cells = {}
    for eot in (1, 5):
        store = _run(tmp_path / f"e{eot}", defenses=(NOISY,), attacks=("pgd10",),
                     threats=("whitebox",), eps=(0.1,), eot=eot, eval_draws=3)
        row = store.frame().set_index("defense").loc[NOISY]
        cells[eot] = row
        assert row["config"]["eval_draws"] == 3 and row["metadata"]["eval_draws"] == 3
    assert "eot" not in cells[1]["config"] and cells[5]["config"]["eot"] == 5
    assert cells[1]["config_hash"] != cells[5]["config_hash"]
    assert not np.array_equal(cells[1]["robust_correct"], cells[5]["robust_correct"])
