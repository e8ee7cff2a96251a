"""The generic registry (fresh instances, so the global ones stay untouched) and entry points."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import bench.registry
from bench.defense import Defense
from bench.errors import ConfigError, DuplicatePluginError, PluginImportError, UnknownPluginError
from bench.registry import DATASETS, MODELS, Registry, natural_key


class Toy:
    """A toy attack for registry tests.

    More text that is not part of the one-line description.
    """

    def __init__(self, steps: int = 1, eps: float = 0.1) -> None:
        self.steps = steps
        self.eps = eps


@pytest.fixture
def reg() -> Registry[Any]:
    r: Registry[Any] = Registry("attack")
    for name, steps in [("pgd100", 100), ("pgd10", 10), ("pgd2", 2), ("fgsm", 1),
                        ("ifgsm4", 4)]:
        r.register(name, steps=steps)(Toy)
    return r


def test_natural_key_orders_numbers_numerically() -> None:
    names = ["resnet101", "pgd100", "resnet18", "pgd10", "pgd2", "resnet50"]
    assert sorted(names, key=natural_key) == [
        "pgd2", "pgd10", "pgd100", "resnet18", "resnet50", "resnet101"]


def test_listing_takes_globs_in_natural_order(reg: Registry[Any]) -> None:
    assert reg.names() == ["fgsm", "ifgsm4", "pgd2", "pgd10", "pgd100"]
    assert reg.list("pgd*") == ["pgd2", "pgd10", "pgd100"]
    assert reg.list("PGD1*") == ["pgd10", "pgd100"]
    assert reg.list("*fgsm*") == ["fgsm", "ifgsm4"]
    assert reg.list("cw*") == []
    assert [e.name for e in reg.entries("pgd1*")] == ["pgd10", "pgd100"]


def test_unknown_name_suggests_the_closest_and_the_list_command(reg: Registry[Any]) -> None:
    with pytest.raises(UnknownPluginError) as err:
        reg.get("pdg100")
    msg = str(err.value)
    assert msg.startswith("Unknown attack 'pdg100'.")
    assert "Did you mean 'pgd100'" in msg
    assert "python -m bench list attacks" in msg
    assert isinstance(err.value, KeyError)  # and str() is not KeyError's quoted repr
    with pytest.raises(UnknownPluginError) as err:
        reg.build("zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "python -m bench list attacks" in str(err.value)
    assert "pdg100" not in reg and "pgd100" in reg


def test_duplicate_name_is_an_error_at_registration(reg: Registry[Any]) -> None:
    with pytest.raises(DuplicatePluginError, match="'pgd10' is registered twice") as err:

        @reg.register("pgd10", steps=11)
        class Other(Toy):
            pass

    assert str(err.value).count(__file__) == 2  # both places, as files
    assert reg.build("pgd10").steps == 10  # the first registration is kept, not overwritten


@pytest.mark.parametrize("name", ["PGD10", "pgd 10", "-pgd", "_pgd", "", "pgd.10", "timm:x",
                                  "pgd/10", "pgé"])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="lower case"):
        Registry("attack").register(name)


@pytest.mark.parametrize("name", ["pgd10", "cw-l2", "auto_attack", "0x"])
def test_valid_names_are_accepted(name: str) -> None:
    r: Registry[Any] = Registry("attack")
    r.register(name)(Toy)
    assert r.names() == [name]


def test_overrides_are_applied_and_overridable(reg: Registry[Any]) -> None:
    obj = reg.build("pgd100")
    assert (obj.steps, obj.eps) == (100, 0.1)
    assert obj.registry_name == "pgd100"
    assert obj.params == {"steps": 100, "eps": 0.1}  # every argument, defaults filled in
    obj = reg.build("pgd100", steps=7, eps=0.3)
    assert (obj.steps, obj.eps) == (7, 0.3)
    assert obj.params == {"steps": 7, "eps": 0.3}
    assert reg.get("pgd100").overrides == {"steps": 100}  # the entry itself is unchanged


def test_unknown_option_is_a_config_error_listing_the_accepted_ones(reg: Registry[Any]) -> None:
    with pytest.raises(ConfigError, match="'pgd10' takes no option stpes. Did you mean 'steps'"
                                          "\\? It accepts: steps\\."):
        reg.build("pgd10", stpes=3)


def test_stacked_decorators_register_variants_of_one_class() -> None:
    r: Registry[Any] = Registry("attack")

    @r.register("b2", steps=2)
    @r.register("b1", steps=1, description="custom text")
    class B(Toy):
        """First line of B."""

    assert r.names() == ["b1", "b2"]
    assert r.get("b1").description == "custom text"
    assert r.get("b2").description == "First line of B."
    assert r.build("b2").steps == 2


def test_description_is_the_docstring_summary(reg: Registry[Any]) -> None:
    assert reg.get("fgsm").description == "A toy attack for registry tests."


def test_where_names_the_registering_module(reg: Registry[Any]) -> None:
    assert reg.where("pgd10") == __name__
    with pytest.raises(UnknownPluginError):
        reg.where("nope")


def test_builders_returning_immutable_objects_still_build() -> None:
    r: Registry[Any] = Registry("dataset")
    r.register("answer", value=42)(lambda value: (value,))
    assert r.build("answer") == (42,)


def test_prefix_families_resolve() -> None:
    r: Registry[Any] = Registry("model")
    calls: list[tuple[str, dict[str, Any]]] = []

    @r.register_prefix("timm")
    def family(arch: str, **kwargs: Any) -> dict[str, Any]:
        """Any timm architecture."""
        calls.append((arch, kwargs))
        return {"arch": arch, **kwargs}

    family.kind = "model"  # type: ignore[attr-defined]
    r.register("cnn")(Toy)
    assert r.build("timm:resnet18", pretrained=False) == {"arch": "resnet18", "pretrained": False}
    assert calls == [("resnet18", {"pretrained": False})]
    assert "timm:inception_v3" in r
    assert "timm:" not in r  # an empty architecture is not a name
    entry = r.get("timm:resnet18")
    assert entry.name == "timm:resnet18" and entry.module == __name__
    assert entry.description == "Any timm architecture."
    assert r.where("timm:vit_tiny") == __name__
    assert [e.name for e in r.entries()] == ["cnn", "timm:<name>"]
    assert r.names() == ["cnn"]  # the family is not a concrete name
    with pytest.raises(UnknownPluginError, match="Did you mean 'timm:resnet18'"):
        r.get("tim:resnet18")
    with pytest.raises(UnknownPluginError, match="Did you mean 'timm:'"):
        r.get("timm")
    with pytest.raises(DuplicatePluginError, match="prefix 'timm:'"):
        r.register_prefix("timm")(family)


def test_global_registries_resolve_builtin_entries() -> None:
    assert {"digits", "mnist", "cifar10", "svhn", "imagenet"} <= set(DATASETS.names())
    assert {"cnn", "cnn3x3", "resnet18", "vgg11"} <= set(MODELS.names())
    assert MODELS.where("cnn") == "bench.models.zoo"
    assert "timm:resnet18" in MODELS
    with pytest.raises(UnknownPluginError, match="Did you mean 'cifar10'.*list datasets"):
        DATASETS.get("cifar")


def test_builtin_import_failure_is_raised_on_every_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bench_test_bad_builtins.py").write_text("raise ImportError('no such thing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r: Registry[Any] = Registry("attack", "bench_test_bad_builtins")
    for _ in range(2):  # never a silently empty registry after the first failure
        with pytest.raises(ImportError, match="no such thing"):
            r.names()
    sys.modules.pop("bench_test_bad_builtins", None)


# -- third-party plugins, installed for real ---------------------------------------------------

PLUGIN = '''
"""A throwaway third-party defense plugin."""
from bench.defense import Defense
from bench.registry import register_defense


@register_defense("my-identity")
class MyIdentity(Defense):
    """Identity preprocessor from a third-party package."""

    def forward(self, x):
        return x
'''

BROKEN = '''
"""A third-party plugin that fails on import."""
raise RuntimeError("boom from my_broken_plugin")
'''


def _write_package(root: Path, dist: str, module: str, source: str, group: str,
                   entry: str) -> Path:
    pkg = root / dist
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.0.1"

        [project.entry-points."{group}"]
        {entry} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (pkg / f"{module}.py").write_text(source)
    return pkg


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two throwaway plugin packages installed with pip into one target folder."""
    pytest.importorskip("setuptools", reason="building the throwaway plugin needs setuptools")
    root = tmp_path_factory.mktemp("plugins")
    good = _write_package(root, "my-bench-plugin", "my_bench_plugin", PLUGIN, "bench.defenses",
                          "myplug")
    bad = _write_package(root, "my-broken-plugin", "my_broken_plugin", BROKEN, "bench.attacks",
                         "broken")
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(good), str(bad)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


@pytest.fixture
def on_path(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()
    yield plugin_site
    for mod in ("my_bench_plugin", "my_broken_plugin"):
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()


def test_installed_plugin_registers_through_its_entry_point(
    on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh: Registry[Any] = Registry("defense", None, "bench.defenses")
    # The plugin's decorator must land in the fresh registry, not in the global DEFENSES.
    monkeypatch.setattr(bench.registry, "register_defense", fresh.register)
    assert fresh.names() == ["my-identity"]
    assert fresh.where("my-identity") == "my_bench_plugin"
    assert fresh.get("my-identity").description == (
        "Identity preprocessor from a third-party package.")
    defense = fresh.build("my-identity", input_shape=(1, 28, 28), num_classes=10)
    assert isinstance(defense, Defense) and defense.registry_name == "my-identity"
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(defense(x), x)
    with pytest.raises(UnknownPluginError, match="Did you mean 'my-identity'"):
        fresh.get("my-identiti")


def test_plugin_that_fails_to_import_is_reported_not_skipped(on_path: Path) -> None:
    fresh: Registry[Any] = Registry("attack", None, "bench.attacks")
    for _ in range(2):  # and again on the next use: a failure never leaves a half-loaded registry
        with pytest.raises(PluginImportError) as err:
            fresh.names()
        msg = str(err.value)
        assert "plugin 'broken' (my_broken_plugin, entry point group 'bench.attacks')" in msg
        assert "RuntimeError: boom from my_broken_plugin" in msg
        assert "uninstall" in msg
        assert isinstance(err.value.__cause__, RuntimeError)


def test_plugin_name_clashing_with_a_registered_one_is_an_error(
    on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh: Registry[Any] = Registry("defense", None, "bench.defenses")
    fresh.register("my-identity")(Toy)
    monkeypatch.setattr(bench.registry, "register_defense", fresh.register)
    for _ in range(2):
        with pytest.raises(DuplicatePluginError) as err:
            fresh.names()
        assert f"in {__file__} and in {on_path / 'my_bench_plugin.py'}" in str(err.value)
        sys.modules.pop("my_bench_plugin", None)


# -- entry points that register nothing, or register in two groups -----------------------------

EMPTY = '''
"""A third-party plugin whose import registers nothing (e.g. a forgotten decorator)."""
'''

DUAL = '''
"""A third-party package registering a defense and an attack from one module."""
from bench.attack import Attack
from bench.defense import Defense
from bench.registry import register_attack, register_defense


@register_defense("dual-identity")
class DualIdentity(Defense):
    """Identity preprocessor registered beside an attack."""

    def forward(self, x):
        return x


@register_attack("dual-none")
class DualNone(Attack):
    """An attack that returns its input, registered beside a defense."""

    def perturb(self, model, x, y):
        return x.clone()
'''


@pytest.fixture(scope="module")
def more_plugins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An empty plugin and a two-group plugin, each installed into its own target folder."""
    pytest.importorskip("setuptools", reason="building the throwaway plugin needs setuptools")
    root = tmp_path_factory.mktemp("more-plugins")
    empty = _write_package(root, "my-empty-plugin", "my_empty_plugin", EMPTY, "bench.defenses",
                           "empty")
    dual = _write_package(root, "my-dual-plugin", "my_dual_plugin", DUAL, "bench.defenses",
                          "dual")
    with (dual / "pyproject.toml").open("a") as f:  # the same module, a second group
        f.write('\n[project.entry-points."bench.attacks"]\ndual = "my_dual_plugin"\n')
    sites = {}
    for name, pkg in (("empty", empty), ("dual", dual)):
        sites[name] = root / f"site-{name}"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
             "--no-index", "--disable-pip-version-check", "--quiet", "--target",
             str(sites[name]), str(pkg)],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return sites


@pytest.fixture
def drop_modules() -> Iterator[None]:
    """The throwaway plugin modules a test imports are dropped afterwards, pass or fail."""
    yield
    for mod in ("my_empty_plugin", "my_dual_plugin"):
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()


def test_plugin_that_registers_nothing_is_an_error_naming_the_package(
    more_plugins: dict[str, Path], drop_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(more_plugins["empty"]))
    fresh: Registry[Any] = Registry("defense", None, "bench.defenses")
    for _ in range(2):  # raised on every use, never a silently empty registry
        with pytest.raises(PluginImportError) as err:
            fresh.names()
        msg = str(err.value)
        assert msg.startswith("Third-party defense plugin 'empty' (my_empty_plugin, package "
                              "my-empty-plugin) loaded but registered no defense")
        assert "@register_defense" in msg and "shadow" in msg and "\n" not in msg


def test_one_module_registering_a_defense_and_an_attack_loads_in_both_groups(
    more_plugins: dict[str, Path], drop_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(more_plugins["dual"]))
    defenses: Registry[Any] = Registry("defense", None, "bench.defenses")
    attacks: Registry[Any] = Registry("attack", None, "bench.attacks")
    monkeypatch.setattr(bench.registry, "register_defense", defenses.register)
    monkeypatch.setattr(bench.registry, "register_attack", attacks.register)
    assert defenses.names() == ["dual-identity"]  # imports the module: both decorators run
    assert attacks.names() == ["dual-none"]  # the module is already imported: nothing new
    assert attacks.where("dual-none") == defenses.where("dual-identity") == "my_dual_plugin"
    assert attacks.build("dual-none", eps=0.1).name == "dual-none"
