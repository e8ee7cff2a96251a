"""Feature-denoising blocks, backbone and plugins (Xie et al., CVPR 2019): each denoising op
against a reference computed by hand, the block's ablations, block placement, and ResNet-152."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.cache import Cache
from bench.data import Digits
from bench.defense import MODEL, FitContext, fit_or_load
from bench.defenses.feature_denoising._blocks import (
    Bilateral,
    DenoisingBlock,
    MeanFilter,
    MedianFilter,
    NonLocalMeans,
)
from bench.defenses.feature_denoising._resnet import DenoisingResNet, ResidualBlock, backbone
from bench.defenses.feature_denoising.feature_denoising import FeatureDenoisingNet
from bench.errors import ConfigError
from bench.registry import DEFENSES
from tests.conftest import TinyNet

VARIANTS = ["fd-nonlocal-gauss", "fd-nonlocal-dot", "fd-bilateral", "fd-bilateral-dot", "fd-mean",
            "fd-median", "fd-null", "fd-bottleneck", "fd-baseline", "fd-nonlocal-gauss-all",
            "fd-nonlocal-gauss-no1x1", "fd-nonlocal-gauss-nores"]


def features(c: int = 4, h: int = 5, w: int = 6, n: int = 2) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


def in_map_neighbours(x: torch.Tensor, i: int, j: int) -> list[tuple[int, int]]:
    h, w = x.shape[-2:]
    return [(a, b) for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
            if 0 <= a < h and 0 <= b < w]


# -- the operations ---------------------------------------------------------------------------
@pytest.mark.parametrize("c,h,w", [(3, 4, 5), (40, 3, 3)])  # both branches (C < N and C >= N)
def test_nonlocal_dot_is_the_mean_of_dot_weighted_features(c: int, h: int, w: int) -> None:
    x = features(c, h, w)
    flat = x.flatten(2)  # n, c, N
    want = torch.einsum("nci,ncj,ndj->ndi", flat, flat, flat) / (h * w)
    got = NonLocalMeans(c, softmax=False)(x)
    assert torch.allclose(got, want.view_as(x), atol=1e-5)
    assert not any(p.numel() for p in NonLocalMeans(c, softmax=False).parameters())


def test_nonlocal_gauss_weights_are_a_softmax_over_embeddings() -> None:
    torch.manual_seed(0)
    op = NonLocalMeans(6, softmax=True)
    x = features(6)
    x[:, 0] = 0.7  # a constant channel: its output is 0.7 * (sum of the weights)
    theta, phi = op.theta(x).flatten(2), op.phi(x).flatten(2)
    assert theta.shape[1] == 3  # embedded to C/2 channels
    weights = torch.softmax(theta.transpose(1, 2) @ phi / math.sqrt(3), dim=-1)
    out = op(x)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 0.7), atol=1e-5)
    assert torch.allclose(out.flatten(2), x.flatten(2) @ weights.transpose(1, 2), atol=1e-5)


def test_nonlocal_subsampling_max_pools_only_x_j() -> None:
    x = features(3, 6, 6)
    pooled = F.max_pool2d(x, 2).flatten(2)
    want = torch.einsum("nci,ncj,ndj->ndi", x.flatten(2), pooled, pooled) / pooled.shape[2]
    got = NonLocalMeans(3, softmax=False, subsample=True)(x)
    assert got.shape == x.shape
    assert torch.allclose(got, want.view_as(x), atol=1e-5)


@pytest.mark.parametrize("softmax", [True, False])
def test_bilateral_is_restricted_to_the_3x3_neighbourhood(softmax: bool) -> None:
    torch.manual_seed(0)
    op = Bilateral(4, softmax=softmax)
    x = features(4, 6, 6)
    far, near = x.clone(), x.clone()
    far[:, :, 4:, :] += 5.0  # rows 4-5: more than one pixel away from row 2
    near[:, :, 3, 2] += 5.0
    out = op(x)
    assert torch.allclose(op(far)[:, :, 2, 2], out[:, :, 2, 2], atol=1e-6)
    assert not torch.allclose(op(near)[:, :, 2, 2], out[:, :, 2, 2], atol=1e-3)


def test_bilateral_dot_matches_eqn_2_inside_and_at_a_corner() -> None:
    x = features(3, 4, 4)
    out = Bilateral(3, softmax=False)(x)
    for i, j in [(1, 2), (0, 0)]:
        nb = in_map_neighbours(x, i, j)
        want = sum((x[:, :, i, j] * x[:, :, a, b]).sum(1, keepdim=True) * x[:, :, a, b]
                   for a, b in nb) / len(nb)
        assert torch.allclose(out[:, :, i, j], want, atol=1e-5)


def test_bilateral_gauss_weights_sum_to_one_also_at_borders() -> None:
    torch.manual_seed(0)
    x = features(4, 5, 5)
    x[:, 1] = -1.3
    assert torch.allclose(Bilateral(4, softmax=True)(x)[:, 1], torch.full((2, 5, 5), -1.3),
                          atol=1e-5)


def test_mean_filter_averages_in_map_neighbours() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    out = MeanFilter()(x)
    for i in range(3):
        for j in range(4):
            nb = in_map_neighbours(x, i, j)
            assert out[0, 0, i, j] == pytest.approx(sum(float(x[0, 0, a, b]) for a, b in nb)
                                                    / len(nb))


def test_median_filter_equals_a_reference_median() -> None:
    x = torch.tensor([[[[1.0, 9.0, 2.0, 8.0],
                        [7.0, 3.0, 100.0, 4.0],
                        [5.0, -50.0, 6.0, 0.0],
                        [2.0, 2.0, 2.0, 11.0]]]]).repeat(2, 3, 1, 1)
    x[1] *= -1  # a second image and channels to show the filter is per image and channel
    out = MedianFilter()(x)
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(4):
                    vals = torch.stack([x[n, c, a, b] for a, b in in_map_neighbours(x, i, j)])
                    assert out[n, c, i, j] == torch.median(vals), (n, c, i, j)
    assert out[0, 0, 1, 2] == 4.0 and out[0, 0, 2, 1] == 3.0  # the outliers 100, -50 removed


def test_median_filter_passes_gradients() -> None:
    x = features().requires_grad_(True)
    MedianFilter()(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# -- the block and its ablations --------------------------------------------------------------
def test_dot_block_with_zero_1x1_weights_is_the_identity() -> None:
    block = DenoisingBlock(4, "nonlocal_dot").eval()
    nn_init = torch.nn.init
    nn_init.ones_(block.bn.weight)  # a non-zero BN scale: only the zero conv makes it vanish
    nn_init.zeros_(block.conv.weight)
    x = features()
    assert torch.equal(block(x), x)
    nn_init.normal_(block.conv.weight)
    assert not torch.allclose(block(x), x)


def test_blocks_start_as_identity_and_null_is_conv_plus_residual() -> None:
    x = features()
    for op in ("nonlocal_gauss", "bilateral_gauss", "mean", "median", "null"):
        assert torch.equal(DenoisingBlock(4, op).eval()(x), x), op
    block = DenoisingBlock(4, "null").eval()
    torch.nn.init.ones_(block.bn.weight)
    want = x + block.bn(block.conv(x))
    assert isinstance(block.op, torch.nn.Identity)
    assert torch.allclose(block(x), want)


def test_no_1x1_ablation_adds_the_op_output() -> None:
    block = DenoisingBlock(4, "mean", conv1x1=False)
    x = features()
    assert block.conv is None and not list(block.parameters())
    assert torch.allclose(block(x), x + MeanFilter()(x))
    with pytest.raises(ConfigError, match="null"):
        DenoisingBlock(4, "null", conv1x1=False)


def test_no_residual_ablation_drops_the_skip() -> None:
    block = DenoisingBlock(4, "median", residual=False).eval()
    assert torch.equal(block.bn.weight, torch.ones(4))  # not zero-initialised without the skip
    with torch.no_grad():
        block.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    x = features()
    assert torch.allclose(block(x), MedianFilter()(x), atol=1e-4)


# -- the backbone -----------------------------------------------------------------------------
def count(net: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def test_small_backbone_places_one_block_after_each_stage() -> None:
    net = DenoisingResNet((1, 28, 28), 10, backbone("small"), "mean")
    assert count(net, DenoisingBlock) == 4 and count(net, ResidualBlock) == 4
    sizes = []
    x = torch.rand(2, 1, 28, 28)
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, DenoisingBlock):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 14, 14), (32, 7, 7), (64, 4, 4), (128, 2, 2)]
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_every_placement_subsamples_nonlocal_and_baselines_differ() -> None:
    cfg = backbone("small", depths="2,1,1,2")
    every = DenoisingResNet((3, 32, 32), 10, cfg, "nonlocal_gauss", "every")
    blocks = [m for m in every.modules() if isinstance(m, DenoisingBlock)]
    assert len(blocks) == 6 and all(b.op.subsample for b in blocks)
    stage = DenoisingResNet((3, 32, 32), 10, cfg, "nonlocal_gauss")
    assert not any(m.op.subsample for m in stage.modules() if isinstance(m, DenoisingBlock))
    plus = DenoisingResNet((3, 32, 32), 10, cfg, "bottleneck")
    base = DenoisingResNet((3, 32, 32), 10, cfg, "none")
    assert count(plus, ResidualBlock) == count(base, ResidualBlock) + 4
    assert count(plus, DenoisingBlock) == count(base, DenoisingBlock) == 0
    assert every(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet152_imagenet_configuration_runs_a_forward_pass() -> None:
    cfg = backbone("resnet152")
    assert cfg.depths == (3, 8, 36, 3) and cfg.block == "bottleneck"
    torch.manual_seed(0)
    net = FeatureDenoisingNet((3, 224, 224), 1000).eval()
    assert net.backbone == "resnet152"  # the default from 64 px
    assert count(net, ResidualBlock) == 50 and count(net, DenoisingBlock) == 4
    with torch.no_grad():
        out = net(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert sum(p.numel() for p in net.parameters()) > 60_000_000


def test_bad_backbone_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resnet152"):
        backbone("resnet151")
    with pytest.raises(ConfigError, match="one entry per stage"):
        backbone("small", depths="1,1,1")
    with pytest.raises(ConfigError, match="positive integers"):
        backbone("small", widths="a,b")


# -- the plugins ------------------------------------------------------------------------------
def test_variants_are_registered_model_defenses() -> None:
    for name in VARIANTS:
        entry = DEFENSES.get(name)
        assert entry.builder is FeatureDenoisingNet and entry.kind == MODEL
    assert DEFENSES.get("fd-nonlocal-gauss-all").overrides["placement"] == "every"


def test_training_recipe_is_the_papers_scaled_by_eps() -> None:
    paper = FeatureDenoisingNet(attack_steps=30)
    attack, sched = paper.recipe(16 / 255)
    assert attack.step == pytest.approx(1 / 255) and attack.targeted
    assert attack.clean_start == 0.2 and sched.label_smoothing == 0.1
    assert sched.lr == pytest.approx(0.1)  # 0.1 x batch/256, kept at 0.1 below batch 256
    attack, _ = FeatureDenoisingNet(attack_steps=5).recipe(0.2)
    assert attack.step * 5 == pytest.approx(0.2 * 30 / 16)  # the paper's total travel
    _, sched = FeatureDenoisingNet(batch_size=4096).recipe(16 / 255)
    assert sched.lr == pytest.approx(1.6) and sched.warmup > 0


def test_fit_uses_the_datasets_default_eps_and_records_it(tmp_path) -> None:
    class Tiny(Digits):
        fit_images = 40

    ctx = FitContext(Tiny(), TinyNet(), [], torch.device("cpu"), Cache(tmp_path), key={"t": 1})
    net = DEFENSES.build("fd-null", epochs=1, batch_size=20, attack_steps=1)
    meta = fit_or_load(net, ctx)
    assert meta["eps"] == Digits.default_eps and meta["attack"]["eps"] == Digits.default_eps
    assert meta["iterations"] == 2 and meta["train_images"] == 40
    assert "scaled_from_paper" in net.metadata()
    assert DEFENSES.build("fd-null", eps="16/255").eps == pytest.approx(16 / 255)
