"""The adversarial-training loop (Xie et al.'s and Madry et al.'s recipes) and the at-pgd plugin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.cache import Cache
from bench.data import Digits
from bench.defense import FitContext, fit_or_load
from bench.defenses._adv_train import (
    PAPER_MILESTONES,
    PGDRecipe,
    Schedule,
    craft,
    lr_factor,
    make_optimizer,
    train_step,
    travel_step,
)
from bench.defenses.at_pgd import MadryAT
from bench.errors import ConfigError
from bench.models import CNN3x3, PaperCNN
from bench.registry import DEFENSES
from tests.attacks.helpers import train_logistic
from tests.conftest import TinyNet

EPS = 0.05


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logistic regression at 100% on 200 images of 4 close classes (1x8x8)."""
    return train_logistic()


def test_targeted_craft_moves_towards_a_random_wrong_class(toy) -> None:
    model, x, y = toy
    params = [p.clone() for p in model.parameters()]
    model.train()
    recipe = PGDRecipe(EPS, steps=10, step=EPS / 4, targeted=True, clean_start=0.0)
    x_adv, target, clean = craft(model, x, y, recipe, torch.Generator().manual_seed(0), 4)
    assert not clean and target is not None
    assert (target != y).all() and set(target.tolist()) == {0, 1, 2, 3}
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean()
    assert hit > 0.5, "PGD did not descend towards the target class"
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))


def test_untargeted_craft_ascends_the_true_label_loss(toy) -> None:
    model, x, y = toy
    recipe = PGDRecipe(EPS, steps=10, step=EPS / 4, targeted=False, clean_start=0.0)
    x_adv, target, _ = craft(model, x, y, recipe, torch.Generator().manual_seed(0), 4)
    assert target is None
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).float().mean() > 0.5


def test_starts_are_80_percent_random_and_20_percent_clean(toy) -> None:
    model, x, y = toy
    recipe = PGDRecipe(EPS, steps=0, step=0.0, targeted=True, clean_start=0.2)
    gen = torch.Generator().manual_seed(0)
    flags = []
    for _ in range(500):
        x_adv, _, clean = craft(model, x[:4], y[:4], recipe, gen, 4)
        assert torch.equal(x_adv, x[:4]) == clean  # a clean start is the image itself
        assert (x_adv - x[:4]).abs().max() <= EPS + 1e-6
        flags.append(clean)
    assert 0.15 < sum(flags) / len(flags) < 0.25  # binomial sd 0.018


def test_train_step_uses_label_smoothing_on_adversarial_images() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    nn.init.normal_(model[1].weight)  # confident logits: smoothing changes the loss visibly
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        logp = model(x).log_softmax(1)
    y = logp.argmax(1)  # confident and right: plain cross-entropy near 0, smoothed not
    want = (0.9 * F.nll_loss(logp, y) - 0.1 * logp.mean(1).mean()).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = train_step(model, opt, x, y, label_smoothing=0.1)
    assert loss == pytest.approx(want, rel=1e-5)
    assert abs(loss - F.nll_loss(logp, y).item()) > 0.05


def test_schedule_has_the_papers_shape() -> None:
    sched = Schedule(epochs=110, batch_size=128, lr=0.05, milestones=PAPER_MILESTONES)
    assert [lr_factor(e, 110, sched) for e in (0, 34, 35, 69, 70, 94, 95, 109)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = Schedule(epochs=110, batch_size=4096, lr=1.6, warmup=5 / 110)
    assert lr_factor(0, 110, warm) == pytest.approx(0.1 / 1.6)
    assert lr_factor(5, 110, warm) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="optimizer"):
        Schedule(epochs=1, batch_size=1, lr=0.1, optimizer="rmsprop")


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))
    opt = make_optimizer(model, Schedule(epochs=1, batch_size=1, lr=0.1, weight_decay=1e-4))
    decayed, plain = opt.param_groups
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0
    assert opt.defaults["nesterov"]


def test_travel_step_is_the_papers_step_at_the_papers_steps() -> None:
    assert travel_step(16 / 255, 30, 30, 1 / 16) == pytest.approx(1 / 255)
    assert travel_step(0.3, 40, 40, 1 / 30) == pytest.approx(0.01)
    assert travel_step(0.2, 5, 30, 1 / 16) * 5 == pytest.approx(0.2 * 30 / 16)


# -- at-pgd -----------------------------------------------------------------------------------
def test_at_pgd_builds_the_named_architecture_fresh() -> None:
    assert isinstance(MadryAT().net, PaperCNN)  # the default outside a session
    assert isinstance(DEFENSES.build("at-pgd", model="cnn3x3").net, CNN3x3)
    with pytest.raises(ConfigError, match="epochs"):
        MadryAT(epochs=0)


def test_at_pgd_uses_madrys_untargeted_random_start_recipe() -> None:
    attack, sched = MadryAT(attack_steps=40).recipe(0.3)
    assert not attack.targeted and attack.clean_start == 0.0
    assert attack.step == pytest.approx(0.01) and sched.label_smoothing == 0.0
    assert sched.optimizer == "adam"


def test_at_pgd_fits_at_the_datasets_default_eps(tmp_path) -> None:
    class Tiny(Digits):
        fit_images = 32

    ctx = FitContext(Tiny(), TinyNet(), [], torch.device("cpu"), Cache(tmp_path), key={"t": 1})
    net = DEFENSES.build("at-pgd", epochs=1, batch_size=16, attack_steps=1)
    meta = fit_or_load(net, ctx)
    assert meta["eps"] == Digits.default_eps and meta["model"] == "cnn"
    assert meta["attack"]["targeted"] is False and meta["iterations"] == 2
    assert "scaled_from_paper" in net.metadata()
