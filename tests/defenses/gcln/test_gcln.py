"""Tests of GCLN (defenses/gcln/gcln.py, defenses/gcln/_nets.py): variants, networks, gradients, the
clean pool, the generator loss and a tiny training run."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench.cache import Cache
from bench.data import BenchDataset
from bench.defense import FitContext, fit_or_load
from bench.defenses._lossnet import feature_extractor
from bench.defenses.gcln._dct import QuantizedTransform
from bench.defenses.gcln._nets import CleanPool, Generator, detector
from bench.errors import ConfigError
from bench.registry import DEFENSES
from bench.threat import Threat, uses_bpda

TINY = {"epochs": 1, "batch_size": 8, "attack_steps": 2, "width": 4, "blocks": 1}


class _Zeros(BenchDataset):
    """16 random 28x28 training images, all labelled 0."""

    input_shape = (1, 28, 28)
    eps_max = 0.3
    default_eps = 0.2
    models = ("tiny", "tiny")
    fit_images = 16

    def _load(self, split: str) -> TensorDataset:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return TensorDataset(torch.rand(16, 1, 28, 28, generator=g), torch.zeros(16).long())


class _Constant(nn.Module):
    """A classifier that always predicts class ``k``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(k), 10).float() * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1).mean(1, keepdim=True)


def build(name: str = "gcln-q10", shape: tuple[int, ...] = (1, 28, 28), **kw):
    torch.manual_seed(0)
    return DEFENSES.build(name, input_shape=shape, num_classes=10, **{**TINY, **kw})


def context(tmp_path, classifier: nn.Module) -> FitContext:
    return FitContext(_Zeros(), classifier, [], torch.device("cpu"), Cache(tmp_path), seed=0,
                      key={"test": "gcln"})


def test_variants_fix_qs_and_the_sweep_option_changes_the_cache_key() -> None:
    q5, q10, q20 = build("gcln-q5"), build("gcln-q10"), build("gcln-q10", qs=20)
    assert (q5.qs, q10.qs, q20.qs) == (5.0, 10.0, 20.0)
    assert q10.generator.qnt.qs == 10.0 and q10.generator.qnt.block == 8
    keys = [d.cache_key() for d in (q5, q10, q20)]
    assert len({str(k) for k in keys}) == 3
    assert keys[0]["lossnet"] == q5.lossnet_source == q5.metadata()["lossnet"]
    assert q5.lossnet_source.startswith("vgg19-")
    assert not q10.differentiable and q10.needs_training
    assert uses_bpda(Threat.WHITEBOX, q10) and not uses_bpda(Threat.OBLIVIOUS, q10)


@pytest.mark.parametrize("opts, match", [({"qs": 0}, "numbers > 0"),
                                         ({"qs": "abc"}, "qs=.abc. must be float"),
                                         ({"qs": -5}, "numbers > 0"),
                                         ({"lam": 1.5}, "lam must be in"),
                                         ({"loss_layers": "8,99"}, "loss_layers"),
                                         ({"loss_layers": "relu2_2"}, "loss_layers"),
                                         ({"lossnet": "vgg-from-mars"}, "weights=")])
def test_bad_options_are_one_line_config_errors(opts: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build(**opts)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_generator_and_detector_shapes(shape: tuple[int, ...]) -> None:
    d = build(shape=shape, width=None, blocks=2)
    assert d.width == (32 if shape[0] == 1 else 64)
    x = torch.rand(5, *shape)
    out = d(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert d.detector(x).shape == (5,)
    assert isinstance(d.generator.qnt, QuantizedTransform)  # the first layer of G


def test_untrained_generator_is_the_quantized_transform() -> None:
    g = Generator(1, 8, 2, qs=10, block=8)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(g(x), g.qnt(x).clamp(0, 1))


def test_attack_forward_has_the_forward_values_and_a_straight_through_gradient() -> None:
    d = build().eval()
    x = (0.2 + 0.6 * torch.rand(4, 1, 28, 28)).requires_grad_(True)  # no clamping at init
    with torch.no_grad():
        plain = d(x)
    out = d.attack_forward(x)
    assert torch.equal(out.detach(), plain)
    w = torch.randn_like(plain)
    (out * w).sum().backward()
    # untrained G is QNT + 0: its straight-through Jacobian is the identity (not BPDA on all of G)
    assert torch.allclose(x.grad, w, atol=1e-5)


def test_loss_network_is_not_in_the_state_dict() -> None:
    d = build()
    assert all(k.startswith(("generator.", "detector.")) for k in d.state_dict())


def test_clean_pool_adds_only_correct_images_and_keeps_the_newest() -> None:
    clean = torch.zeros(3, 1, 4, 4)
    pool = CleanPool(clean, capacity=2)
    x_hat = torch.arange(1, 5).float().view(4, 1, 1, 1).expand(4, 1, 4, 4)
    assert pool.add(x_hat, torch.tensor([True, False, True, False])) == 2
    assert len(pool) == 5
    assert sorted(pool.recovered[:, 0, 0, 0].tolist()) == [1.0, 3.0]
    assert pool.add(x_hat, torch.tensor([False, False, False, True])) == 1
    assert len(pool) == 5 and sorted(pool.recovered[:, 0, 0, 0].tolist()) == [3.0, 4.0]
    drawn = pool.sample(200, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    assert set(drawn.tolist()) == {0.0, 3.0, 4.0}  # clean images and the kept recovered ones
    empty = CleanPool(clean)
    assert empty.add(x_hat, torch.zeros(4, dtype=torch.bool)) == 0 and len(empty) == 3


def test_generator_loss_weights_perceptual_and_adversarial_terms() -> None:
    lossnet = feature_extractor("vgg19", [8], weights="random")
    x, x_hat = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    totals = {}
    for lam in (0.0, 0.5, 1.0):
        d = build(lam=lam).train()
        torch.manual_seed(0)
        total, parts = d.generator_loss(x_hat, x, lossnet)
        totals[lam] = (total.item(), parts)
    lp, la = totals[0.5][1]["L_P"], totals[0.5][1]["L_A"]
    assert totals[0.5][0] == pytest.approx(0.5 * lp + 0.5 * la, rel=1e-5)
    assert totals[1.0][0] == pytest.approx(lp, rel=1e-5)
    assert totals[0.0][0] == pytest.approx(la, rel=1e-5)
    assert lp > 0 and la > 0


@pytest.mark.parametrize("k, added", [(0, 16), (1, 0)])  # labels are all 0
def test_training_grows_the_pool_with_correctly_classified_recoveries(tmp_path, k: int,
                                                                      added: int) -> None:
    clf = _Constant(k)
    d = build(warmup_epochs=1)
    before = {n: p.clone() for n, p in d.state_dict().items()}
    meta = fit_or_load(d, context(tmp_path, clf))
    assert meta["pool_added"] == added
    assert meta["epochs"] == 1 and meta["train_images"] == 16
    assert meta["train_attack"] == {"attack": "pgd10", "steps": 2, "eps": 0.2, "alpha": 0.025}
    assert meta["lossnet"] == d.lossnet_source and "scaled_from_paper" in meta
    assert not torch.equal(before["generator.recover.0.weight"],
                           d.state_dict()["generator.recover.0.weight"])
    assert clf.bias.requires_grad and clf.bias.grad is None  # frozen while training, restored


def test_the_attacked_training_set_is_shared_by_every_qs(tmp_path, tiny_net) -> None:
    ctx = context(tmp_path, tiny_net)
    for qs in (5.0, 10.0):
        fit_or_load(build(qs=qs), ctx)
    assert len(list((tmp_path / "gcln-trainsets").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "defenses").glob("*.safetensors"))) == 2


def test_default_epochs_rule_and_metadata() -> None:
    d = build(epochs=None)
    assert [d._epochs(n) for n in (10000, 1437, 48)] == [1, 2, 30]
    meta = d.metadata()
    assert meta["epochs"] == "auto" and meta["qs"] == 10.0 and "scaled_from_paper" in meta


def test_detector_alone_separates_clean_from_attacked() -> None:
    torch.manual_seed(0)
    det = detector(1, 16)
    opt = torch.optim.Adam(det.parameters(), 1e-3)
    clean = torch.rand(32, 1, 16, 16) * 0.2
    noisy = (clean + 0.3 * torch.randn_like(clean).sign()).clamp(0, 1)
    x, y = torch.cat([clean, noisy]), torch.cat([torch.ones(32), torch.zeros(32)])
    for _ in range(80):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(det(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    det.eval()
    assert ((det(x) > 0).float() == y).float().mean() > 0.9


@pytest.mark.slow
def test_mnist_gcln_beats_no_defense_on_a_small_slice(mnist_root, tmp_path) -> None:
    """Real MNIST, shrunk budgets (1 classifier epoch, 1,000 GCLN training images, 200 test
    images): GCLN keeps the clean accuracy and far more FGSM accuracy than no defense; the
    whitebox row is marked BPDA and records the loss network."""
    from bench.config import RunConfig
    from bench.executors import run_grid
    from bench.store import Store

    cfg = RunConfig(datasets=("mnist",), defenses=("none", "gcln-q10"), attacks=("fgsm",),
                    threats=("oblivious", "whitebox"), eps=(0.2,), n=200,
                    data_root=str(mnist_root), model_opts={"epochs": 1, "train_images": 20000},
                    fit_images=1000)
    store = Store(tmp_path / "r.sqlite")
    run_grid(cfg, store, Cache(tmp_path / "cache"))
    df = store.frame()
    assert len(df) == 4
    row = {(r.defense, r.threat): r for r in df.itertuples()}
    none, obl, wb = (row["none", "oblivious"], row["gcln-q10", "oblivious"],
                     row["gcln-q10", "whitebox"])
    assert obl.clean_acc > none.clean_acc - 0.05
    assert obl.robust_acc > none.robust_acc + 0.2
    assert wb.bpda and not obl.bpda
    assert wb.metadata["lossnet"].startswith("vgg19-") and wb.metadata["qs"] == 10.0
    assert wb.metadata["fit"]["train_images"] == 1000
