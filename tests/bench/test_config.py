"""Option parsing at the boundary, directories, and the run configuration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.config import (
    ENV_CACHE_DIR,
    ENV_DATA_ROOT,
    ENV_RESULTS,
    RunConfig,
    cache_dir,
    data_root,
    format_eps,
    parse_eps,
    parse_options,
    results_path,
    split_list,
)
from bench.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.2", 0.2), ("8/255", 8 / 255), (" 0.03 ", 0.03), ("0", 0.0), ("1", 1.0), (0.5, 0.5),
     (0, 0.0)],
)
def test_parse_eps_accepts_decimals_and_fractions(text: str | float, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value, abs=0)


@pytest.mark.parametrize("text", ["-0.1", "1.5", "abc", "", "nan", "inf", "1/0", "8/", -0.1, 2])
def test_parse_eps_rejects_bad_values_with_the_value_and_the_fix(text: str | float) -> None:
    with pytest.raises(ConfigError) as err:
        parse_eps(text)
    msg = str(err.value)
    assert repr(text) in msg
    assert "8/255" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("eps", "shown"),
    [(8 / 255, "8/255"), (4 / 255, "4/255"), (1 / 255, "1/255"), (0.2, "0.2"), (0.3, "0.3"),
     (0.03, "0.03"), (0.0, "0"), (1.0, "1"), (0.4, "0.4")],
)
def test_format_eps(eps: float, shown: str) -> None:
    assert format_eps(eps) == shown


@pytest.mark.parametrize("eps", [8 / 255, 16 / 255, 0.2, 0.3, 0.03, 0.0, 1.0, 0.1234567])
def test_format_eps_round_trips_through_parse_eps(eps: float) -> None:
    assert parse_eps(format_eps(eps)) == pytest.approx(eps, rel=1e-5)


def test_split_list() -> None:
    assert split_list(None) == []
    assert split_list("") == []
    assert split_list(" none, lgd ,,fgd ") == ["none", "lgd", "fgd"]


def test_parse_options_reads_json_values_else_strings() -> None:
    opts = parse_options(["epochs=5", "lr=1e-3", "pretrained=false", "arch=unet", "sizes=[1,2]"])
    assert opts == {"epochs": 5, "lr": 1e-3, "pretrained": False, "arch": "unet", "sizes": [1, 2]}
    assert parse_options(None) == {}


@pytest.mark.parametrize("item", ["epochs", "=5", "Epochs=5", "1x=2", "a-b=1"])
def test_parse_options_rejects_malformed_items(item: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_options([item])


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv(ENV_DATA_ROOT)
    assert data_root() == Path.home() / ".cache" / "bench" / "data"


def test_cache_dir_and_results_path_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "c"))
    monkeypatch.setenv(ENV_RESULTS, str(tmp_path / "r.sqlite"))
    assert cache_dir() == (tmp_path / "c").resolve()
    assert results_path() == (tmp_path / "r.sqlite").resolve()
    assert results_path(tmp_path / "x.sqlite") == (tmp_path / "x.sqlite").resolve()
    monkeypatch.delenv(ENV_RESULTS)
    assert results_path().name == "bench.sqlite"


@pytest.mark.parametrize("n", [0, -1])
def test_run_config_rejects_non_positive_n(n: int) -> None:
    with pytest.raises(ConfigError, match=f"--n {n}"):
        RunConfig(n=n)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"batch_size": 0}, "--batch-size"), ({"targeted": "yes"}, "--targeted"),
     ({"alpha": 0.0}, "--alpha"), ({"alpha": 2.0}, "--alpha"), ({"eps": (0.1, 1.5)}, "1.5")],
)
def test_run_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig(**kwargs)


def test_run_config_is_frozen_and_stores_eps_as_numbers() -> None:
    cfg = RunConfig(n=10, eps=("8/255", 0.1))  # type: ignore[arg-type]
    assert cfg.eps == (8 / 255, 0.1)
    assert cfg.n == 10 and RunConfig().n is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n = 5  # type: ignore[misc]
    d = cfg.to_dict()
    assert d["eps"] == (8 / 255, 0.1) and d["datasets"] == ("digits",)


def test_run_config_from_file_command_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"datasets": ["mnist"], "attacks": ["fgsm", "pgd10"], "n": 50,
                                "eps": ["8/255"], "seed": 3}))
    cfg = RunConfig.from_file(path, n=20, seed=None)
    assert cfg.datasets == ("mnist",)
    assert cfg.attacks == ("fgsm", "pgd10")
    assert cfg.n == 20  # command line wins
    assert cfg.seed == 3  # None on the command line means "not given"
    assert cfg.eps == (8 / 255,)


def test_run_config_from_file_errors(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad_key.json"
    bad_key.write_text(json.dumps({"dataset": ["mnist"]}))
    with pytest.raises(ConfigError, match="Unknown keys \\['dataset'\\]"):
        RunConfig.from_file(bad_key)
    not_json = tmp_path / "not.json"
    not_json.write_text("{datasets: mnist")
    with pytest.raises(ConfigError, match="Cannot read config file"):
        RunConfig.from_file(not_json)
    with pytest.raises(ConfigError, match="Cannot read config file"):
        RunConfig.from_file(tmp_path / "missing.json")
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"n": 0}))
    with pytest.raises(ConfigError, match="--n 0"):
        RunConfig.from_file(zero)


def test_parse_options_accepts_plugin_scoped_keys() -> None:
    opts = parse_options(["gcln-q10.qs=20", "lgd.epochs=5", "timm:resnet18.lr=0.1", "bits=4"])
    assert opts == {"gcln-q10.qs": 20, "lgd.epochs": 5, "timm:resnet18.lr": 0.1, "bits": 4}


def test_a_scoped_option_wins_over_a_bare_one_in_either_order() -> None:
    from bench.options import scoped
    from bench.registry import DEFENSES

    builder = DEFENSES.get("lgd").builder
    for opts in ({"lgd.epochs": 1, "epochs": 2}, {"epochs": 2, "lgd.epochs": 1}):
        assert scoped(opts, "lgd", builder) == {"epochs": 1}
        assert scoped(opts, "dunet", builder) == {"epochs": 2}


def test_int_option_accepts_integers_in_range_and_names_the_fix() -> None:
    from bench.config import int_option

    assert int_option("jpeg", "quality", 75.0, 1, 100) == 75
    assert int_option("median", "kernel", 12, 1) == 12
    for bad in (0, 101, 2.5, True, "7"):
        with pytest.raises(ConfigError, match=r"jpeg quality=.*--defense-opt jpeg\.quality="):
            int_option("jpeg", "quality", bad, 1, 100)
