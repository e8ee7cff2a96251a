"""HGD Appendix C ensembles: which parts each Table 9 row names, how they combine, and what the
attacker differentiates."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from bench.defense import Defense, Parts
from bench.errors import BenchError, ConfigError
from bench.registry import DEFENSES

MODELS = ("cnn", "cnn3x3")


def ensemble(name: str = "ensemble", **opts: object) -> Defense:
    return DEFENSES.build(name, input_shape=(1, 4, 4), num_classes=3, model="cnn", **opts)


@pytest.mark.parametrize(("name", "opts", "parts"), [
    ("ensemble", {}, Parts(("lgd", "lgd@cnn3x3"), MODELS)),
    ("ensemble-targets", {}, Parts(("none",), MODELS)),
    ("ensemble-shared", {}, Parts(("lgd",), MODELS)),
    ("ensemble-cross", {}, Parts(("lgd", "lgd@cnn3x3"), MODELS)),
    ("ensemble-images", {}, Parts(("lgd", "lgd@cnn3x3"), MODELS)),
    ("ensemble", {"denoisers": "lgd@cnn3x3", "targets": "cnn3x3"},
     Parts(("lgd@cnn3x3",), ("cnn3x3",))),
    ("ensemble-cross", {"denoisers": "dunet,fgd@all"}, Parts(("dunet", "fgd", "fgd@cnn3x3"),
                                                             MODELS)),
])
def test_each_table9_row_names_its_parts(name: str, opts: dict[str, object],
                                         parts: Parts) -> None:
    assert ensemble(name, **opts).parts(MODELS) == parts


def test_pairs_need_one_denoiser_per_target_and_parts_must_be_preprocessors() -> None:
    with pytest.raises(ConfigError, match="one denoiser per target"):
        ensemble(denoisers="lgd").parts(MODELS)
    with pytest.raises(ConfigError, match="whole classifier"):
        ensemble(denoisers="at-pgd")
    with pytest.raises(BenchError, match="nope"):
        ensemble(denoisers="nope")
    with pytest.raises(ConfigError, match="combine"):
        ensemble(combine="vote")
    with pytest.raises(ConfigError, match="parts are missing"):
        ensemble()(torch.rand(2, 1, 4, 4))


class Scale(Defense):
    """A preprocessor multiplying images by ``k`` (declared non-differentiable when asked)."""

    def __init__(self, k: float, differentiable: bool = True) -> None:
        super().__init__((1, 4, 4), 3)
        self.k, self.differentiable = k, differentiable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.k).round() if not self.differentiable else x * self.k


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def composed(combine: str, parts: Sequence[Defense], models: Sequence[nn.Module]) -> Defense:
    d = ensemble(combine=combine, denoisers=",".join("none" for _ in parts),
                 targets=",".join(MODELS[: len(models)]))
    d.compose(parts, models)
    return d


def test_logits_images_and_pairs_combine_as_the_appendix_says() -> None:
    x = torch.rand(5, 1, 4, 4)
    d1, d2, f1, f2 = Scale(0.5), Scale(0.25), linear(0), linear(1)
    cross = composed("logits", [d1, d2], [f1, f2])(x)
    images = composed("images", [d1, d2], [f1, f2])(x)
    pairs = composed("pairs", [d1, d2], [f1, f2])(x)
    a, b = x * 0.5, x * 0.25
    torch.testing.assert_close(cross, (f1(a) + f2(a) + f1(b) + f2(b)) / 4)
    torch.testing.assert_close(images, (f1((a + b) / 2) + f2((a + b) / 2)) / 2)
    torch.testing.assert_close(pairs, (f1(a) + f2(b)) / 2)


def test_the_attacker_differentiates_every_part_through_its_own_attack_forward() -> None:
    """A part declaring BPDA passes the identity gradient; its forward result is unchanged."""
    x = (torch.rand(3, 1, 4, 4) * 4).requires_grad_(True)
    f = linear(0)
    d = composed("logits", [Scale(1.0, differentiable=False)], [f])
    out = d.attack_forward(x)
    torch.testing.assert_close(out, d(x))
    out.sum().backward()
    expected = f[1].weight.sum(0).view(1, 1, 4, 4).expand_as(x)
    torch.testing.assert_close(x.grad, expected)
    assert all(not p.requires_grad for p in f.parameters()), "classifier weights stay frozen"


def test_randomized_and_bpda_follow_the_parts() -> None:
    assert ensemble("ensemble-shared", denoisers="randomization").randomized
    both = ensemble("ensemble-shared", denoisers="randomization,none")
    assert both.randomized and both.differentiable
    assert not ensemble("ensemble-shared", denoisers="bitdepth").differentiable
    plain = ensemble()
    assert not plain.randomized and plain.differentiable
    assert not ensemble("ensemble-targets").randomized  # the identity is no randomness
