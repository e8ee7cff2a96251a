"""The perceptual-loss denoising AE: the paper's architecture, loss weights, conversion, caching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.cache import Cache
from bench.data import Digits
from bench.defense import FitContext, fit_or_load
from bench.defenses._lossnet import feature_extractor
from bench.defenses.perceptual_ae._perceptual import (
    ConvAutoencoder,
    adversarial_set,
    perceptual_loss,
    to_gray28,
)
from bench.defenses.perceptual_ae.perceptual_ae import PerceptualAE
from bench.errors import ConfigError
from bench.registry import DEFENSES
from tests.conftest import TinyNet

PAPER_WEIGHTS = (0.00048, 0.00024, 0.00012, 0.0013)  # alpha, beta, gamma, delta (section 4.2)


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


class TinyDigits(Digits):
    fit_images = 16


def test_the_ae_maps_28x28x1_to_2x2x8_and_back() -> None:
    ae = ConvAutoencoder()
    x = torch.rand(3, 1, 28, 28)
    sizes = []
    h = x
    for m in [*ae.encoder, *ae.decoder]:
        h = m(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes[2] == (16, 5, 5) and sizes[5] == (8, 2, 2)  # after each max-pool
    assert ae.encoder(x).shape == (3, 8, 2, 2)
    assert [sizes[i] for i in (6, 8, 10)] == [(16, 5, 5), (8, 15, 15), (1, 28, 28)]
    out = ae(x)
    assert out.shape == x.shape and out.abs().max() < torch.pi / 2  # atan, unclamped
    d = PerceptualAE().eval()
    d.ae.load_state_dict(ae.state_dict())
    assert torch.equal(d(x), out.clamp(0, 1))
    assert sum(p.numel() for p in ae.parameters()) == 160 + 1160 + 1168 + 3208 + 33


@pytest.mark.parametrize(("layers", "size"), [("22,13,8", 16), ("29,16,9", 32)])
def test_loss_weights_are_one_over_numel_the_papers_values(layers: str, size: int) -> None:
    net = feature_extractor("vgg16", [int(i) for i in layers.split(",")], weights="random")
    x = torch.rand(2, 1, 28, 28)
    loss, weights = perceptual_loss(net, x, x, size)
    assert torch.equal(loss, torch.zeros(2))
    assert weights == pytest.approx(PAPER_WEIGHTS, rel=0.02)
    x_d = x.clone().requires_grad_(True)
    loss, _ = perceptual_loss(net, x_d * 0.5, x, size)
    loss.sum().backward()
    assert (loss > 0).all() and x_d.grad.abs().sum() > 0


def test_other_shapes_are_converted_to_gray_28_and_back() -> None:
    d = PerceptualAE((3, 32, 32)).eval()
    x = torch.rand(4, 3, 32, 32)
    out = d(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 2])  # grayscale, replicated
    assert to_gray28(x).shape == (4, 1, 28, 28)
    assert d.metadata()["converted_to_gray28"]
    with pytest.raises(ConfigError, match="convert=true"):
        PerceptualAE((3, 32, 32), convert=False)


@pytest.mark.parametrize("opts", [{"train_on": "cw"}, {"epochs": 0}, {"eps": 2.0},
                                  {"loss_net": "pretrained"}, {"loss_layers": "a,b"}])
def test_bad_options_are_config_errors(opts: dict) -> None:
    with pytest.raises(ConfigError):
        PerceptualAE(**opts)


def test_the_loss_network_source_is_in_the_key_and_rows_but_not_the_weights() -> None:
    d = DEFENSES.build("perceptual-ae", input_shape=(1, 28, 28), num_classes=10)
    assert d.cache_key()["loss_source"] == d.metadata()["loss_source"] == \
        "vgg16-random-kaiming-seed0"
    assert all(k.startswith("ae.") for k in d.state_dict())
    other = PerceptualAE(loss_seed=1)
    assert other.cache_key() != d.cache_key()


def test_fit_trains_on_adversarial_images_and_lowers_the_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ctx = FitContext(TinyDigits(), TinyNet().eval(), [], torch.device("cpu"),
                     Cache(tmp_path), seed=0, key={"test": "pae"})
    d = PerceptualAE(epochs=3, batch_size=16, attack_steps=2, warmup_epochs=1)
    data = adversarial_set(ctx, 16, 0.2, ("fgsm", "pgd"), 2)
    assert data["x_adv"].shape == (32, 1, 28, 28) and data["x"].shape == (16, 1, 28, 28)
    gap = (data["x_adv"] - data["x"].repeat(2, 1, 1, 1)).abs().flatten(1).amax(1)
    assert (gap > 0.1).all() and (gap <= 0.2 + 1e-6).all()  # eps = the digits' default 0.2
    meta = fit_or_load(d, ctx)
    assert meta["eps"] == 0.2 and meta["adversarial_images"] == 32 and meta["epochs"] == 3
    assert meta["loss_history"][-1] < meta["loss_history"][0]
    assert meta["loss_weights"] == ["1/2048", "1/4096", "1/8192", "1/784"]
    assert "vgg16-random" in meta["scaled_from_paper"]
