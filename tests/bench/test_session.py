"""Session: the target classifier's name reaches defenses whose constructor takes ``model``;
surrogate classifiers are trained only for the defenses that use them, and where they come from
(trained now or cached) never changes a defense's weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.cache import Cache
from bench.defense import MODEL, Defense, LazyModels
from bench.errors import ConfigError, PluginContractError
from bench.models import PendingClassifier, load_classifier
from bench.registry import DEFENSES, Entry
from bench.session import Session


class SameArchitecture(Defense):
    """A throwaway model defense that wants the target's architecture name."""

    kind = MODEL

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 model: str = "default") -> None:
        super().__init__(input_shape, num_classes)
        self.model = model


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> str:
    DEFENSES.load()
    monkeypatch.setitem(DEFENSES._entries, "tmp-same-arch", Entry("tmp-same-arch",
                                                                  SameArchitecture))
    monkeypatch.setitem(DEFENSES._entries, "tmp-fixed-arch", Entry(
        "tmp-fixed-arch", SameArchitecture, {"model": "fixed"}))
    return "tmp-same-arch"


def test_the_target_model_name_is_passed_as_model(registered: str) -> None:
    assert Session("digits", "cnn3x3").defense_params(registered)["model"] == "cnn3x3"
    assert Session("digits").defense_params(registered)["model"] == "cnn"  # dataset default


def test_an_option_or_a_variant_setting_wins(registered: str) -> None:
    s = Session("digits", "cnn3x3", defense_opts={f"{registered}.model": "cnn"})
    assert s.defense_params(registered)["model"] == "cnn"
    assert Session("digits", "cnn3x3").defense_params("tmp-fixed-arch")["model"] == "fixed"


def test_defenses_without_a_model_parameter_get_none(registered: str) -> None:
    assert "model" not in Session("digits", "cnn3x3").defense_params("none")


def test_surrogates_are_trained_only_when_a_defense_uses_them(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    s = Session("digits", cache=cache, model_opts={"epochs": 1})
    ctx = s.models.fit_context()
    trained = sorted(p.name for p in (tmp_path / "classifiers").glob("*.safetensors"))
    assert len(trained) == 1 and trained[0].startswith("digits-cnn-")  # the target only
    assert isinstance(ctx.surrogates, LazyModels) and not ctx.surrogates.made
    key_before = ctx.key["surrogates"]

    surrogate = ctx.surrogates[0]  # first use: the surrogate is trained and cached now
    assert ctx.surrogates.made and len(ctx.surrogates) == 1
    assert isinstance(surrogate, nn.Module) and [*ctx.surrogates] == [surrogate]
    assert len(list((tmp_path / "classifiers").glob("*.safetensors"))) == 2
    assert key_before == [m.key for m in s.models.surrogates]  # the key never needed the weights
    assert s.models.fit_context().key == ctx.key


def test_pending_classifier_key_equals_the_loaded_key(tmp_path: Path) -> None:
    s = Session("digits", cache=Cache(tmp_path))
    pending = PendingClassifier("cnn3x3", s.dataset, cache=s.cache, device=s.device, epochs=1)
    assert not list(tmp_path.rglob("*.safetensors"))  # building computes the key, trains nothing
    loaded = load_classifier("cnn3x3", s.dataset, cache=s.cache, device=s.device, epochs=1)
    assert pending.key == loaded.key
    assert pending.load().meta == loaded.meta  # loads what load_classifier cached


def test_building_and_training_a_classifier_leave_the_global_rng_alone(tmp_path: Path) -> None:
    s = Session("digits", cache=Cache(tmp_path))
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    pending = PendingClassifier("cnn3x3", s.dataset, cache=s.cache, device=s.device, epochs=1)
    pending.load()  # cold: builds and trains
    assert list(tmp_path.rglob("*.safetensors"))
    PendingClassifier("cnn3x3", s.dataset, cache=s.cache, device=s.device, epochs=1).load()
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.slow
def test_a_defense_is_the_same_whether_its_surrogate_was_cached_or_trained_now(
        tmp_path: Path) -> None:
    """HGD draws its U-net's initial weights after reading the surrogates; training one lazily in
    between must not shift that draw (same cache key, so it must be the same weights)."""
    tiny = {"widths": "2,3,4,4,4", "epochs": 1, "batch_size": 16}

    def lgd_weights(cache_dir: Path, surrogates_first: bool) -> dict[str, torch.Tensor]:
        s = Session("digits", cache=Cache(cache_dir), model_opts={"epochs": 1}, fit_images=40,
                    defense_opts=tiny)
        if surrogates_first:
            s.models.surrogates  # noqa: B018 - trains and caches them before the defense's fit
        return s.defense("lgd").state_dict()

    cold, warm = lgd_weights(tmp_path / "a", False), lgd_weights(tmp_path / "b", True)
    assert cold.keys() == warm.keys()
    assert all(torch.equal(cold[k], warm[k]) for k in cold)


def test_a_guide_trains_the_defense_against_another_model(tmp_path: Path) -> None:
    """HGD Table 4's setting: ``--defense-opt lgd.guide=cnn3x3`` trains LGD against the second
    model (its key in the weight key, the target among the other models) and names the row."""
    guided = Session("digits", cache=Cache(tmp_path), defense_opts={"lgd.guide": "cnn3x3"})
    plain = Session("digits", cache=Cache(tmp_path))
    second = plain.models.pending_surrogates[0]
    key = guided.models.fit_key("lgd")
    assert key["classifier"] == second.key and key["surrogates"] == [plain.pending_target.key]
    assert plain.models.fit_key("lgd")["classifier"] == plain.pending_target.key
    assert guided.defense_id("lgd")["guide"] == "cnn3x3" and "guide" not in plain.defense_id("lgd")
    assert guided.defense_id("lgd")["weights"] != plain.defense_id("lgd")["weights"]
    assert guided.defense_params("lgd") == plain.defense_params("lgd")
    same = Session("digits", cache=Cache(tmp_path), defense_opts={"lgd.guide": "cnn"})
    assert same.defense_id("lgd") == plain.defense_id("lgd")  # the target is no guide
    with pytest.raises(ConfigError, match="use a model of digits"):
        Session("digits", defense_opts={"lgd.guide": "resnet18"}).validate(["lgd"])
    with pytest.raises(ConfigError, match="takes no option guide"):
        Session("digits", defense_opts={"jpeg.guide": "cnn3x3"}).validate(["jpeg"])


def test_a_composite_gets_its_parts_as_they_run_alone(tmp_path: Path) -> None:
    """HGD Appendix C: an ensemble's parts are the grid's own defenses (same object, same
    identity), ``NAME@MODEL`` is ``NAME`` guided by MODEL, and every part's identity is in the
    composite's, so a part's option changes the composite's cells too."""
    opts = {"ensemble-shared.denoisers": "jpeg", "ensemble-shared.targets": "cnn"}
    s = Session("digits", n=20, cache=Cache(tmp_path), defense_opts=opts)
    s.validate(["jpeg", "ensemble-shared"])
    ens = s.defense("ensemble-shared")
    assert ens.parts_[0] is s.defense("jpeg") and ens.models_[0] is s.classifier
    ident = s.defense_id("ensemble-shared")["parts"]
    assert ident == {"defenses": {"jpeg": s.defense_id("jpeg")},
                     "models": {"cnn": s.pending_target.key}}
    other = Session("digits", n=20, cache=Cache(tmp_path),
                    defense_opts={**opts, "jpeg.quality": 50})
    assert other.defense_id("ensemble-shared") != s.defense_id("ensemble-shared")
    assert other.defense_params("ensemble-shared") == s.defense_params("ensemble-shared")

    pairs = Session("digits", cache=Cache(tmp_path))
    guided = Session("digits", cache=Cache(tmp_path), defense_opts={"lgd.guide": "cnn3x3"})
    assert pairs.parts("ensemble").defenses == ("lgd", "lgd@cnn3x3")
    assert pairs.defense_id("lgd@cnn3x3") == guided.defense_id("lgd")
    assert pairs.models.spec("lgd@cnn") == "lgd" and pairs.models.spec("lgd@cnn3x3") == "lgd@cnn3x3"
    assert guided.models.spec("lgd@cnn") == "lgd@cnn"  # its own target, where lgd alone is guided
    assert "guide" not in guided.defense_id("lgd@cnn")


@pytest.mark.parametrize(("opts", "message"), [
    ({"ensemble.denoisers": "jpeg@cnn3x3,jpeg"}, "not trained"),
    ({"ensemble.targets": "cnn,resnet18", "ensemble.combine": "logits"}, "not a model of digits"),
    ({"ensemble.denoisers": "lgd@resnet18,lgd"}, "use a model of digits"),
    ({"ensemble.denoisers": "at-pgd"}, "whole classifier"),
    ({"lgd.epochz": 1}, "epochz"),
])
def test_a_composites_bad_part_is_one_line_before_anything_trains(opts: dict[str, object],
                                                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Session("digits", defense_opts=opts).validate(["ensemble"])


def test_a_parts_options_reach_it_when_only_the_composite_is_in_the_grid() -> None:
    s = Session("digits", defense_opts={"lgd.epochs": 1, "epochs": 2})
    s.validate(["ensemble"])  # lgd is a part: its scope and the bare epochs are accepted
    assert s.defense_params("lgd@cnn3x3")["epochs"] == 1


def test_a_datasets_recipe_reaches_the_defenses_that_take_it() -> None:
    """digits declares a recipe sized to its 1,437 training images (``fit_recipe``): the
    defenses that follow a dataset's recipe (HGD's family) get it as their parameters (so in
    their identity and weight key), beneath the run's options; the others and MNIST keep
    their own defaults."""
    digits, mnist = Session("digits"), Session("mnist")
    assert digits.defenses.fit_budget == 480 and mnist.defenses.fit_budget == 10000
    for name in ("lgd", "dunet", "cgd", "lgd@cnn3x3"):
        params = digits.defense_params(name)
        assert (params["epochs"], params["lr"]) == (3, 3e-3), name
    assert (mnist.defense_params("lgd")["epochs"], mnist.defense_params("lgd")["lr"]) == \
        (None, 1e-3)  # the paper's recipe, as before: MNIST's weight keys are unchanged
    at_pgd = digits.defense_params("at-pgd")  # takes epochs and lr, but not from a dataset
    assert (at_pgd["epochs"], at_pgd["lr"]) == (6, 1e-3)
    assert digits.defense_id("lgd") != Session("digits", defense_opts={"lgd.lr": 1e-3}
                                               ).defense_id("lgd")
    mine = Session("digits", defense_opts={"lgd.epochs": 5, "lr": 1e-4})
    assert (mine.defense_params("lgd")["epochs"], mine.defense_params("lgd")["lr"]) == (5, 1e-4)
    assert "lr 0.003 (paper 0.001)" in digits.built("lgd").metadata()["scaled_from_paper"]


class _MisnamedRecipe(Defense):
    """A throwaway trainable defense following a recipe option its constructor lacks."""

    needs_training = True
    dataset_recipe = ("epochz",)

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 epochs: int = 1) -> None:
        super().__init__(input_shape, num_classes)


def test_a_recipe_option_the_constructor_lacks_is_a_plugin_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    DEFENSES.load()
    monkeypatch.setitem(DEFENSES._entries, "tmp-misnamed", Entry("tmp-misnamed",
                                                                 _MisnamedRecipe))
    with pytest.raises(PluginContractError, match="epochz"):
        Session("digits").defense_params("tmp-misnamed")
