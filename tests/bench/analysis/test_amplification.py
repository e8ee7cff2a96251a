"""Layer-wise error amplification: hooks, the ratio, matched-norm noise, and the written plot."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.analysis.amplification import (
    amplification,
    figure5_curves,
    gaussian_like,
    layer_outputs,
    plot_amplification,
)
from bench.analysis.figures import file_stem


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )


class SharedActivation(nn.Module):
    """Calls one ReLU twice, as torchvision's ResNet blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc2(self.relu(self.fc1(x))))


def test_layer_outputs_order_names_and_mode() -> None:
    model = _cnn().train()
    x = torch.rand(2, 1, 8, 8)
    outs = layer_outputs(model, x)
    assert list(outs) == ["0", "1", "2", "4", "6"]  # Dropout and Flatten skipped
    assert outs["0"].shape == (2, 4, 8, 8) and outs["6"].shape == (2, 10)
    assert (outs["0"] < 0).any()  # cloned before the in-place ReLU overwrote it
    assert torch.allclose(outs["2"], outs["1"].clamp_min(0))
    assert model.training  # mode restored
    assert not model[0]._forward_hooks  # hooks removed


def test_layer_outputs_repeated_module() -> None:
    outs = layer_outputs(SharedActivation(), torch.randn(3, 4))
    assert list(outs) == ["fc1", "relu", "fc2", "relu#2"]


def test_amplification_zero_for_identical_inputs() -> None:
    x = torch.rand(5, 1, 8, 8)
    amp = amplification(_cnn(), x, x.clone())
    assert list(amp) == ["0", "1", "2", "4", "6"]
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in amp.values())


def test_amplification_linear_model_matches_analytic_ratio() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, x_p = torch.rand(7, 3, 2, 2), torch.rand(7, 3, 2, 2)
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    xf, xpf = x.flatten(1).double(), x_p.flatten(1).double()
    ratio = ((xpf - xf) @ w.T).norm(dim=1) / (xf @ w.T + b).norm(dim=1)
    amp = amplification(model, x, x_p, batch_size=3)  # batches of 3, 3, 1
    assert list(amp) == ["1"]
    assert amp["1"] == pytest.approx(float(ratio.mean()), rel=1e-5)


def test_amplification_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        amplification(_cnn(), torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))


def test_gaussian_like_matches_norms_and_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 1, 28, 28), 0.5)
    x_adv = x + 0.01 * torch.sign(torch.randn(x.shape, generator=g)) * torch.rand(4, 1, 1, 1)
    noisy = gaussian_like(x, x_adv, torch.Generator().manual_seed(1))
    want = (x_adv - x).flatten(1).norm(dim=1)  # no pixel reaches 0 or 1: nothing clipped
    assert torch.allclose((noisy - x).flatten(1).norm(dim=1), want, rtol=1e-4)
    again = gaussian_like(x, x_adv, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    loud = gaussian_like(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    assert loud.min() >= 0 and loud.max() <= 1


def test_gaussian_like_matches_the_norm_after_clipping() -> None:
    # MNIST-like images: mostly 0 background, where clipping removes the negative half of the
    # noise; the noise actually added must still have the adversarial norm.
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 1, 28, 28, generator=g) > 0.8).float()
    x_adv = (x + 0.2 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    noisy = gaussian_like(x, x_adv, torch.Generator().manual_seed(2))
    want = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.allclose((noisy - x).flatten(1).norm(dim=1), want, rtol=1e-4)
    assert noisy.min() >= 0 and noisy.max() <= 1
    # the old rescale-then-clip noise fell well short of the norm on such images
    unit = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    unit = unit / unit.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    naive = (x + want.view(-1, 1, 1, 1) * unit).clamp(0, 1)
    assert ((naive - x).flatten(1).norm(dim=1) < 0.9 * want).all()


def test_gaussian_like_saturates_when_the_box_is_too_small() -> None:
    x = torch.zeros(1, 1, 2, 2)
    x_adv = torch.ones(1, 1, 2, 2)  # norm 2: reachable only if every pixel goes to 1
    noisy = gaussian_like(x, x_adv, torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert float((noisy - x).norm()) <= 2 + 1e-6


def test_plot_writes_png_svg_csv(tmp_path: Path) -> None:
    model, x = _cnn(), torch.rand(6, 1, 8, 8)
    x_adv = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    curves, dashed = figure5_curves(model, x, x_adv, {"half": (x + x_adv) / 2},
                                    torch.Generator().manual_seed(0), matched_noise=True)
    assert dashed == {"random noise": None, "random noise, half's norm": "half (denoised)"}
    paths = plot_amplification(curves, tmp_path / "plots", "test", "amp", dashed)
    assert [p.name for p in paths] == ["amp.png", "amp.svg", "amp.csv"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader(paths[2].open()))
    assert rows[0] == ["layer", "depth", "adversarial", "random noise", "half (denoised)",
                       "random noise, half's norm"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "4", "6"]
    assert float(rows[1][2]) == pytest.approx(curves["adversarial"]["0"])


def test_file_stem_is_portable() -> None:
    assert file_stem("amplification", "imagenet", "timm:inception_v3", "ifgsm4") == \
        "amplification-imagenet-timm_inception_v3-ifgsm4"
    assert file_stem("sweep", "mnist", "robustbench:A/B c", "eps") == \
        "sweep-mnist-robustbench_A_B_c-eps"


def test_plot_dashed_reference_takes_its_curves_colour(tmp_path: Path) -> None:
    curves = {"denoised": {"a": 0.1, "b": 0.2}, "noise at its norm": {"a": 0.1, "b": 0.05},
              "noise": {"a": 0.3, "b": 0.1}}
    dashed = {"noise at its norm": "denoised", "noise": None}
    svg = plot_amplification(curves, tmp_path, "t", "amp", dashed)[1].read_text()
    lines = re.findall(r'<g id="line2d_\d+">\s*<path d="[^"]*"[^>]*style="([^"]*)"', svg)
    data = [style for style in lines if "stroke-width: 1.5" in style][:3]  # the 3 curves
    colours = [re.search(r"stroke: (#[0-9a-f]+)", style).group(1) for style in data]
    assert colours[0] == colours[1] != colours[2]
    assert ["dasharray" in style for style in data] == [False, True, True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amplification_moves_cpu_batches_to_the_model_device() -> None:
    x = torch.rand(4, 1, 8, 8)
    x_p = gaussian_like(x, (x + 0.05).clamp(0, 1), torch.Generator().manual_seed(0))
    cpu = amplification(_cnn(), x, x_p)
    gpu = amplification(_cnn().cuda(), x, x_p)
    assert list(gpu) == list(cpu)
    assert all(gpu[k] == pytest.approx(cpu[k], rel=2e-2) for k in cpu)  # TF32 convolutions
