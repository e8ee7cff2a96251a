"""Cell identity: every option of every registered plugin is part of what identifies a cell.

Parametrized over every constructor option of every registered attack and defense (a new
plugin, or a new option, is covered without new test code): changing the option changes the
cell's hash, and for an attack also the key of its adversarial set (the cache would otherwise
return a set made with the old value).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.config import RunConfig
from bench.data import get_dataset
from bench.errors import BenchError
from bench.plan import Planner
from bench.registry import ATTACKS, DEFENSES, Registry
from bench.session import Session
from bench.signature import HARNESS_SET, accepted_options
from bench.threat import Target, Threat

EPS = 0.2
DATASET = get_dataset("digits")
TEXT = ["random", "least-likely", "small", "every", "ce", "dlr", "label", "logit", "pixel",
        "feature", "mean", "null", "fgsm", "cnn3x3", "resnet152", "imagenet", "2,3,4,4,4",
        "1,1,1,1", "15", "8,15", "random-kaiming", "images", "logits", "dunet@all"]


def _options(registry: Registry[Any]) -> list[tuple[str, str]]:
    out = []
    for name in registry.names():
        params = accepted_options(registry.get(name).builder) or {}
        out += [(name, k) for k in params if k not in HARNESS_SET]
    return out


def _candidates(default: Any, annotation: str) -> list[Any]:
    """Values to try in place of ``default``, by the annotation's alternatives (the first valid
    one that changes the plugin's resolved parameters is used)."""
    alts = [a.strip() for a in annotation.split("|")]
    out: list[Any] = []
    if "bool" in alts:
        out.append(not default)
    if "int" in alts:
        d = default if isinstance(default, int) and not isinstance(default, bool) else 1
        out += [d + 1, d * 2, max(1, d - 1), 1, 2, 3, 4, 5]
    if "float" in alts:  # a None default (e.g. a step size) gets small values: eps is 0.2
        out += [default * 2, default / 2] if isinstance(default, float) else [0.01, 0.05]
        out += [0.5, 0.1, 0.25]
    if "str" in alts or any(a.startswith("Sequence") for a in alts):
        out += TEXT
    return out


def _changed(registry: Registry[Any], name: str, option: str, build: Any) -> Any:
    """A value of ``option`` that ``build(value)`` accepts and that changes the resolved
    parameters; skips (visibly) when none of the candidates is valid for this plugin."""
    param = accepted_options(registry.get(name).builder)[option]
    base = registry.get(name).resolve()
    for value in _candidates(base.get(option, param.default), str(param.annotation)):
        try:
            resolved = registry.get(name).resolve(**{option: value})
            if json.dumps(resolved, default=str) == json.dumps(base, default=str):
                continue
            build(value)
        except BenchError:
            continue
        return value
    pytest.skip(f"no candidate value of {name}.{option} is valid for the plugin")


@pytest.fixture(scope="module")
def runner() -> Planner:
    return Planner(RunConfig(attacks=("fgsm",)))


@pytest.fixture(scope="module")
def session() -> Session:
    return Session(DATASET)


def _attack_identity(session: Session, runner: Planner, name: str,
                     **opts: Any) -> tuple[str, str]:
    attack = ATTACKS.get(name).build(eps=EPS, seed=0, **opts)
    config = runner.cell_config(session, "none", attack, Threat.OBLIVIOUS)
    return (json.dumps(session.sets.key(attack, Target(Threat.OBLIVIOUS)), sort_keys=True,
                       default=str), json.dumps(config, sort_keys=True, default=str))


@pytest.mark.parametrize(("name", "option"), _options(ATTACKS))
def test_every_attack_option_changes_the_cell_and_the_set_key(
        name: str, option: str, session: Session, runner: Planner) -> None:
    def build(value: Any) -> None:
        ATTACKS.get(name).build(eps=EPS, seed=0, **{option: value})

    value = _changed(ATTACKS, name, option, build)
    set_key, cell = _attack_identity(session, runner, name)
    set_key2, cell2 = _attack_identity(session, runner, name, **{option: value})
    assert set_key2 != set_key, f"{name}.{option}={value!r} leaves the adversarial-set key"
    assert cell2 != cell, f"{name}.{option}={value!r} leaves the cell config unchanged"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "option"), _options(DEFENSES))
def test_every_defense_option_changes_the_cell(name: str, option: str, runner: Planner) -> None:
    if DEFENSES.get(name).builder.unsupported(DATASET.info.input_shape):
        pytest.skip(f"{name} does not run on {DATASET.info.name}")
    attack = ATTACKS.get("fgsm").build(eps=EPS, seed=0)

    def config(**opts: Any) -> str:
        s = Session(DATASET, defense_opts={f"{name}.{k}": v for k, v in opts.items()})
        return json.dumps(runner.cell_config(s, name, attack, Threat.WHITEBOX), sort_keys=True,
                          default=str)

    value = _changed(DEFENSES, name, option, lambda v: Session(  # validate: a composite's
        DATASET, defense_opts={f"{name}.{option}": v}).validate([name]))  # parts too
    assert config(**{option: value}) != config(), f"{name}.{option}={value!r} is not in the cell"


def test_the_classifier_options_and_the_run_settings_change_the_cell(runner: Planner) -> None:
    attack = ATTACKS.get("fgsm").build(eps=EPS, seed=0)
    base = runner.cell_config(Session(DATASET), "none", attack, Threat.OBLIVIOUS)
    for change in ({"model_opts": {"epochs": 2}}, {"batch_size": 100}, {"n": 50},
                   {"model_opts": {"cnn3x3.epochs": 2}}):
        s = Session(DATASET, **change)
        if change.get("model_opts", {}).get("cnn3x3.epochs"):
            # a surrogate's recipe changes defenses trained against it, not the baseline
            assert runner.cell_config(s, "lgd", attack, Threat.OBLIVIOUS) != runner.cell_config(
                Session(DATASET), "lgd", attack, Threat.OBLIVIOUS)
            continue
        assert runner.cell_config(s, "none", attack, Threat.OBLIVIOUS) != base, change
