"""The frozen VGG loss networks: weight sources (never downloaded), shapes, freezing, storage."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from bench.defenses._lossnet import FeatureNet, feature_extractor, resolve_source, weight_path
from bench.errors import CheckpointError, ConfigError

PAPER = [9, 16, 29]  # pool2, pool3, relu5_3 of VGG-16


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache with no weight files (tests never read the user's cache)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def fake_imagenet_file(arch: str = "vgg16") -> dict[str, torch.Tensor]:
    """Write a features-only state dict of the right shapes where torchvision keeps its file."""
    trunk = make_layers(cfgs["D" if arch == "vgg16" else "E"])
    state = {f"features.{k}": torch.full_like(v, 0.01 * (i + 1))
             for i, (k, v) in enumerate(trunk.state_dict().items())}
    path = weight_path(arch)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_auto_without_the_file_uses_the_seeded_substitute() -> None:
    net = feature_extractor("vgg16", PAPER, weights="auto", min_size=32)
    assert net.source == "vgg16-random-kaiming-seed0"
    x = torch.rand(2, 1, 28, 28)
    shapes = [tuple(f.shape) for f in net(x)]
    assert shapes == [(2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    again = feature_extractor("vgg16", PAPER, weights="random", min_size=32)
    other = feature_extractor("vgg16", PAPER, weights="random", seed=1, min_size=32)
    assert all(torch.equal(a, b) for a, b in zip(net(x), again(x), strict=True))
    assert other.source.endswith("seed1") and not torch.allclose(net(x)[0], other(x)[0])


def test_imagenet_without_the_file_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as err:
        feature_extractor("vgg19", [3], weights="imagenet")
    msg = str(err.value)
    assert "\n" not in msg and str(weight_path("vgg19")) in msg and "IMAGENET1K_V1" in msg
    assert weight_path("vgg19").name == "vgg19-dcbb9e9d.pth"


def test_auto_loads_imagenet_weights_from_the_local_cache() -> None:
    state = fake_imagenet_file()
    for weights in ("auto", "imagenet"):
        net = feature_extractor("vgg16", [0, 28], weights=weights)
        assert net.source == "vgg16-imagenet" == resolve_source("vgg16", weights)
        assert torch.equal(net.trunk[28].weight, state["features.28.weight"])
    assert feature_extractor("vgg16", [0], weights="random").source.startswith("vgg16-random")


def test_a_corrupt_weight_file_is_a_checkpoint_error() -> None:
    weight_path("vgg16").parent.mkdir(parents=True)
    weight_path("vgg16").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="delete the file"):
        feature_extractor("vgg16", [1])


class _Payload:
    """Unpickling this creates ``marker``: a harmless stand-in for code a malicious file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


def test_a_weight_file_holding_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = weight_path("vgg16")
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "evil": _Payload(marker)}, path)
    probe = tmp_path / "probe.pth"
    shutil.copy(path, probe)
    torch.load(probe, weights_only=False)["evil"].close()  # what an unprotected loader does
    assert marker.exists(), "the payload is not live: the test would prove nothing"
    marker.unlink()
    with pytest.raises(CheckpointError) as err:
        feature_extractor("vgg16", [1])  # auto: the cached file is used
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "UnpicklingError" in msg
    assert not marker.exists(), "the payload ran"


def test_frozen_eval_mode_and_gradients_reach_the_input() -> None:
    net = feature_extractor("vgg19", [3, 8], weights="random")
    assert all(not p.requires_grad for p in net.trunk.parameters())
    net.train()
    assert not net.training and not net.trunk.training
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    sum(f.sum() for f in net(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.trunk.parameters())


def test_grayscale_is_replicated_and_normalized() -> None:
    net = feature_extractor("vgg16", [1], weights="random")
    gray = torch.rand(2, 1, 8, 8)
    assert torch.equal(net(gray)[0], net(gray.expand(-1, 3, -1, -1))[0])
    with pytest.raises(ConfigError, match="grayscale or RGB"):
        net(torch.rand(2, 2, 8, 8))


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lossnet = feature_extractor("vgg16", [1], weights="random")
        self.net = nn.Conv2d(1, 1, 3)


def test_holding_it_saves_and_trains_only_the_owner() -> None:
    h = Holder()
    assert all(k.startswith("net.") for k in h.state_dict())
    assert len(list(h.parameters())) == 2
    h.to(torch.float64)
    assert h.lossnet.trunk[0].weight.dtype == torch.float64
    assert h.lossnet(torch.rand(1, 1, 4, 4, dtype=torch.float64))[0].dtype == torch.float64
    assert isinstance(h.lossnet, FeatureNet) and "vgg16-random" in repr(h.lossnet)


@pytest.mark.parametrize(("arch", "layers", "weights"), [
    ("vgg11", [1], "auto"), ("vgg16", [31], "auto"), ("vgg16", [], "auto"),
    ("vgg16", [1], "pretrained")])
def test_bad_options_are_config_errors(arch: str, layers: list[int], weights: str) -> None:
    with pytest.raises(ConfigError):
        feature_extractor(arch, layers, weights=weights)
