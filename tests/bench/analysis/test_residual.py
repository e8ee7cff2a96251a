"""HGD Figure 7: the least-squares slope of dx^ on dx*, the histogram and the written plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.analysis import residual
from bench.analysis.residual import histogram, plot_residual, residual_fit


def perturbations(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dx_star = 0.1 * torch.sign(torch.randn(n, 1, 8, 8, generator=g)) * torch.rand(n, 1, 8, 8,
                                                                                  generator=g)
    noise = 0.02 * torch.randn(dx_star.shape, generator=g)
    return dx_star, 0.6 * dx_star + 0.01 + noise


def test_exact_line_is_recovered() -> None:
    dx_star = torch.linspace(-0.2, 0.3, 500).view(5, 1, 10, 10)
    fit = residual_fit(dx_star, 1.7 * dx_star - 0.02)
    assert fit.k == pytest.approx(1.7) and fit.intercept == pytest.approx(-0.02, abs=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 500


def test_matches_numpy_least_squares_with_and_without_intercept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dx_star, dx_hat = perturbations()
    a, b = dx_star.double().numpy().ravel(), dx_hat.double().numpy().ravel()
    k, b0 = np.polyfit(a, b, 1)
    fit = residual_fit(dx_star, dx_hat)
    assert fit.k == pytest.approx(k, rel=1e-6) and fit.intercept == pytest.approx(b0, abs=1e-7)
    assert fit.r2 == pytest.approx(np.corrcoef(a, b)[0, 1] ** 2, rel=1e-6)
    assert fit.k_origin == pytest.approx((a @ b) / (a @ a), rel=1e-6)
    assert 0.5 < fit.k < 0.7 and fit.n == a.size
    monkeypatch.setattr(residual, "CHUNK", 37)  # the chunked sums give the same line
    chunked = residual_fit(dx_star, dx_hat)
    assert chunked.k == pytest.approx(fit.k, rel=1e-9) and chunked.r2 == pytest.approx(fit.r2)


def test_undefined_slope_and_shape_mismatch() -> None:
    fit = residual_fit(torch.zeros(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
    assert math.isnan(fit.k) and fit.n == 32
    with pytest.raises(ValueError, match="differ in shape"):
        residual_fit(torch.zeros(2, 4), torch.zeros(3, 4))


def test_histogram_counts_every_pixel_inside_the_range() -> None:
    dx_star, dx_hat = perturbations()
    counts, shown = histogram(dx_star, dx_hat, 0.11, 1.0, bins=10)
    assert counts.shape == (10, 10) and counts.sum() == dx_star.numel() and shown == 1.0
    _, shown = histogram(dx_star, dx_hat, 0.11, 0.01, bins=10)
    assert shown < 0.5


def test_plot_writes_png_svg_and_the_fits_csv(tmp_path: Path) -> None:
    dx_star, dx_hat = perturbations()
    panels = {"half": (dx_star, dx_hat), "double": (dx_star, 2 * dx_star)}
    paths = plot_residual(panels, tmp_path / "plots", "test", "res")
    assert [p.name for p in paths] == ["res.png", "res.svg", "res.csv"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].stat().st_size > 0
    rows = list(csv.DictReader(paths[2].open()))
    assert [r["defense"] for r in rows] == ["half", "double"]
    assert float(rows[0]["k"]) == residual_fit(dx_star, dx_hat).k
    assert float(rows[1]["k"]) == pytest.approx(2.0) and float(rows[1]["r2"]) == pytest.approx(1)
    assert int(rows[0]["n_pixels"]) == dx_star.numel()
    assert 0.99 <= float(rows[0]["shown_fraction"]) <= 1.0
