"""Tests of the HGD family (defenses/hgd/): network, residual, variants, training set, fitting."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from bench.cache import Cache
from bench.data import BenchDataset
from bench.defense import FitContext, LazyModels, fit_or_load
from bench.defenses.hgd import hgd
from bench.defenses.hgd._trainset import ifgsm
from bench.defenses.hgd._unet import PAPER_FEEDBACK, PAPER_FORWARD, ConvBNReLU, default_widths
from bench.errors import ConfigError
from bench.registry import DEFENSES
from tests.conftest import TinyNet

VARIANTS = ("dae", "dunet", "dunet-x2", "fgd", "lgd", "cgd")
TINY = {"widths": "2,3,4,4,4", "epochs": 2, "batch_size": 16}


class _Blobs(BenchDataset):
    """40 train / 10 test smooth 28x28 images whose class is where a bright blob sits."""

    input_shape = (1, 28, 28)
    eps_max = 0.3
    default_eps = 0.2
    models = ("tiny", "tiny")
    fit_images = 40

    def _load(self, split: str) -> TensorDataset:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 40 if split == "train" else 10
        y = torch.arange(n) % 10
        grid = torch.linspace(0, 1, 28)
        cy, cx = (y // 5).float() * 0.5 + 0.25, (y % 5).float() * 0.2 + 0.1
        d2 = (grid.view(1, -1, 1) - cy.view(-1, 1, 1)) ** 2 + (grid.view(1, 1, -1)
                                                                 - cx.view(-1, 1, 1)) ** 2
        x = torch.exp(-d2 / 0.01) + 0.05 * torch.rand(n, 28, 28, generator=g)
        return TensorDataset(x.clamp(0, 1).unsqueeze(1), y)


@pytest.fixture
def ctx(tmp_path, tiny_net) -> FitContext:
    torch.manual_seed(1)
    surrogate = TinyNet().eval()
    return FitContext(_Blobs(), tiny_net, [surrogate], torch.device("cpu"), Cache(tmp_path),
                      seed=0, key={"test": "blobs"})


def build(name: str, shape: tuple[int, ...] = (1, 28, 28), **kw):
    torch.manual_seed(0)
    return DEFENSES.build(name, input_shape=shape, num_classes=10, **{**TINY, **kw})


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", VARIANTS)
def test_shape_and_range(name: str, shape: tuple[int, ...]) -> None:
    d = build(name, shape).eval()
    x = torch.rand(4, *shape)
    out = d(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert d.kind == "preprocessor" and d.needs_training and d.differentiable
    assert "scaled_from_paper" in d.metadata()


def test_default_widths_scale_with_size() -> None:
    assert default_widths(299) == (PAPER_FORWARD, PAPER_FEEDBACK)
    assert default_widths(28) == ((8, 16, 32, 32, 32), (32, 32, 16, 8))
    assert default_widths(64)[0] == (16, 32, 64, 64, 64)
    d = DEFENSES.build("lgd", input_shape=(1, 28, 28), num_classes=10, widths=[4, 8, 8, 8, 8])
    assert d.feedback_widths == (8, 8, 8, 4)  # the paper's mirror of the feedforward path


def test_dae_has_no_lateral_inputs() -> None:
    dae, dunet = build("dae").net, build("dunet").net
    assert not dae.lateral and dunet.lateral
    first_dae, first_unet = dae.decoder[0][0].conv, dunet.decoder[0][0].conv
    assert first_dae.in_channels == 4  # the upsampled feedback input only
    assert first_unet.in_channels == 4 + 4  # plus the lateral feedforward maps
    assert [b[0].conv.in_channels for b in dunet.decoder] == [8, 8, 7, 5]


def test_structure_matches_paper() -> None:
    net = build("dunet").net
    assert [len(block) for block in net.encoder] == [2, 3, 3, 3, 3]
    assert [block[0].conv.stride for block in net.encoder] == [(1, 1)] + [(2, 2)] * 4
    assert all(c.conv.stride == (1, 1) for block in net.encoder for c in block[1:])
    assert all(c.conv.kernel_size == (3, 3) for block in net.encoder for c in block)
    assert [len(block) for block in net.decoder] == [3, 3, 3, 2]
    assert net.to_noise.kernel_size == (1, 1)
    sizes = []
    h = torch.rand(1, 1, 28, 28)
    for block in net.encoder:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [28, 14, 7, 4, 2]


def test_eval_mode_folds_batch_norm_exactly() -> None:
    block = ConvBNReLU(3, 5, stride=2)
    torch.manual_seed(0)
    for _ in range(3):  # give the running statistics non-trivial values
        block(torch.randn(8, 3, 9, 9) * 2 + 1)
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 2)
        block.bn.bias.uniform_(-1, 1)
    block.eval()
    x = torch.randn(4, 3, 9, 9)
    reference = torch.relu(block.bn(block.conv(x)))
    assert torch.allclose(block(x), reference, atol=1e-5)


@pytest.mark.parametrize("name", ["dunet", "lgd", "dae"])
def test_zero_final_conv_is_identity(name: str) -> None:
    d = build(name).eval()
    with torch.no_grad():
        d.net.to_noise.weight.zero_()
        d.net.to_noise.bias.zero_()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(d(x), x)
    wide = x * 1.4 - 0.2  # outside [0,1]: the contract's clamp applies
    assert torch.equal(d(wide), wide.clamp(0, 1))


def test_x2_doubles_predicted_noise() -> None:
    d = build("dunet-x2").eval()
    assert d.noise_scale == 2.0
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(d(x), (x + 2 * d.noise(x)).clamp(0, 1))


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="loss"):
        DEFENSES.build("lgd", loss="pixels")
    with pytest.raises(ConfigError, match="widths"):
        DEFENSES.build("lgd", widths="8,16")
    with pytest.raises(ConfigError, match="epochs"):
        DEFENSES.build("lgd", epochs=0)


def test_training_set_respects_each_eps(ctx: FitContext) -> None:
    data = hgd.make_training_set(ctx, batch_size=16)
    n = ctx.info.fit_images
    assert len(data["x_adv"]) == len(data["src"]) == len(data["eps"]) == 6 * n
    assert torch.equal(data["attack"].bincount(), torch.full((6,), n))
    x = data["x"][data["src"]]
    dist = (data["x_adv"] - x).abs().flatten(1).amax(1)
    assert (dist <= data["eps"] + 1e-6).all()
    assert data["x_adv"].min() >= 0 and data["x_adv"].max() <= 1
    k = data["eps"] / ctx.info.eps_max * hgd.EPS_LEVELS
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= 1 and k.max() <= 16
    assert (dist > 0).float().mean() > 0.5  # the attacks actually perturb


def test_ifgsm_with_a_known_first_step_is_unchanged(tiny_net: TinyNet) -> None:
    x, y = _Blobs().tensors("train", 8)
    eps = torch.linspace(0.02, 0.3, 8)
    plain = ifgsm(tiny_net, x, y, eps, 4)
    first = torch.sign(torch.autograd.functional.vjp(
        lambda z: torch.nn.functional.cross_entropy(tiny_net(z), y, reduction="sum"), x)[1])
    assert torch.equal(ifgsm(tiny_net, x, y, eps, 4, first), plain)
    assert ((plain - x).abs().flatten(1).amax(1) <= eps + 1e-6).all()


def test_training_set_needs_a_surrogate(ctx: FitContext) -> None:
    ctx.surrogates = []
    with pytest.raises(ConfigError, match="second model"):
        hgd.make_training_set(ctx)


def test_a_training_set_larger_than_memory_is_refused_up_front(
        ctx: FitContext, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.runtime

    per_image = 7 * math.prod(ctx.info.input_shape) * 4  # the clean image and its 6 attacks
    monkeypatch.setattr(bench.runtime, "available_memory", lambda: 10 * per_image)
    with pytest.raises(ConfigError) as err:  # 40 images do not fit in the memory of 10
        hgd.make_training_set(ctx)
    msg = str(err.value)
    assert "\n" not in msg and "--fit-images 9 or fewer" in msg and "40 clean images" in msg
    monkeypatch.setattr(bench.runtime, "available_memory", lambda: 100 * per_image)
    assert len(hgd.make_training_set(ctx)["x_adv"]) == 6 * 40


@pytest.mark.parametrize("name", ["dae", "dunet", "fgd", "lgd", "cgd"])
def test_training_reduces_own_loss(name: str, ctx: FitContext) -> None:
    d = build(name, epochs=3)
    data = hgd.make_training_set(ctx, batch_size=64)
    everything = torch.arange(len(data["src"]))
    torch.manual_seed(ctx.seed)  # fit rebuilds the net under the same seed: the same init
    d.net = d._build_net()
    before = d.validation_loss(ctx, data, everything)
    meta = fit_or_load(d, ctx)
    after = d.validation_loss(ctx, data, everything)
    assert after < before, (name, before, after)
    assert meta["epochs"] == 3 and meta["train_size"] + meta["val_size"] == 6 * 40
    assert meta["val_size"] == 6 * 4  # 10% of the clean images, with their 6 versions
    assert not any(p.requires_grad is False for p in d.parameters())
    assert all(p.requires_grad for p in ctx.classifier.parameters())  # restored


def test_fit_or_load_caches_and_shares(ctx: FitContext, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"fit": 0, "train": 0, "set": 0}
    fit, train, make = hgd.HGD.fit, hgd.HGD._train, hgd.make_training_set

    def count(key, fn):
        def wrapped(*a, **kw):
            calls[key] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(hgd.HGD, "fit", count("fit", fit))
    monkeypatch.setattr(hgd.HGD, "_train", count("train", train))
    monkeypatch.setattr(hgd, "make_training_set", count("set", make))
    first = build("dunet")
    meta = fit_or_load(first, ctx)
    again = build("dunet")
    assert fit_or_load(again, ctx)["weights_hash"] == meta["weights_hash"]
    assert calls == {"fit": 1, "train": 1, "set": 1}
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x2 = build("dunet-x2")
    assert fit_or_load(x2, ctx)["shared_weights"]  # dunet's network, not retrained
    assert calls == {"fit": 2, "train": 1, "set": 1}
    assert torch.equal(x2.net.to_noise.weight, first.net.to_noise.weight)
    fit_or_load(build("lgd"), ctx)  # another variant reuses the cached training set
    assert calls == {"fit": 3, "train": 2, "set": 1}
    fit_or_load(build("dunet"), ctx, retrain=True)  # a retrain really retrains
    assert calls == {"fit": 4, "train": 3, "set": 1}


class _Recording(TinyNet):
    """Records (training mode, any parameter requiring grad) at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((self.training, any(p.requires_grad for p in self.parameters())))
        return super().forward(x)


def test_classifiers_are_frozen_while_fitting(tmp_path) -> None:
    target, surrogate = _Recording().train(), _Recording().train()
    ctx = FitContext(_Blobs(), target, [surrogate], torch.device("cpu"), Cache(tmp_path))
    fit_or_load(build("lgd"), ctx)
    assert target.seen == surrogate.seen == {(False, False)}  # eval mode, frozen weights
    assert target.training and all(p.requires_grad for p in target.parameters())  # restored


def test_a_cached_training_set_trains_no_surrogate(ctx: FitContext) -> None:
    """Only making the training set uses the surrogates: a variant fitted on a cached set does
    not make (train) them."""
    made = []

    def surrogates() -> list[torch.nn.Module]:
        made.append(True)
        return [TinyNet().eval()]

    ctx.surrogates = LazyModels(surrogates)
    fit_or_load(build("dunet"), ctx)
    assert made == [True]
    ctx.surrogates = LazyModels(surrogates)
    fit_or_load(build("lgd"), ctx)  # the same training set, read back from the cache
    assert made == [True] and not ctx.surrogates.made
