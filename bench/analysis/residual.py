"""Adversarial vs predicted perturbation, pixel by pixel (HGD, Liao et al. CVPR 2018, Figure 7).

A preprocessing defense maps an adversarial image x* to x^; it removes the perturbation
``dx^ = x* - x^`` (the "predicted perturbation"), while the attack added ``dx* = x* - x``. HGD plots
the 2-D histogram of (dx*, dx^) over all pixels of the adversarial images, with a fitted line
``dx^ = k dx*``: the ideal is ``dx^ = dx*`` (k = 1, the perturbation removed exactly). The paper
finds k < 1 for its pixel-guided denoiser (it removes only part of the noise; Appendix B doubles
dx^ to remedy it) and k > 1 for LGD (it "denoises" aggressively and noisily).

The line is fitted by ordinary least squares *with an intercept*, ``dx^ = k dx* + b``: a denoiser
may shift pixels regardless of the attack (e.g. darken a background), and clipping to [0,1] makes
dx* far from zero-mean on MNIST-like images (background pixels at 0 can only move up); a fit
through the origin would fold that offset into k. The slope through the origin is written to the
CSV too (``k_origin``). Every pixel value counts, those the attack left unchanged (dx* = 0, e.g.
clipped) included.

Example::

    panels = {name: (x_adv - x, x_adv - d(x_adv)) for name, d in denoisers.items()}
    plot_residual(panels, "results/plots", "mnist / cnn, ifgsm4 eps 0.2", "residual-mnist")
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.analysis.common import oblivious_set, preprocessors
from bench.analysis.figures import file_stem, save_figure
from bench.config import format_eps

if TYPE_CHECKING:
    from bench.session import Session

CHUNK = 1 << 22  # pixel values per step of the float64 sums
BINS = 101
PANELS_PER_ROW = 3


@dataclass(frozen=True)
class ResidualFit:
    """Least-squares line ``dx^ = k dx* + intercept`` over ``n`` pixel values.

    Attributes:
        k: slope (1 means the perturbation is removed exactly, < 1 partly, > 1 overshot).
        intercept: offset of the line (pixel scale).
        r2: coefficient of determination of that line (0 when dx^ is constant).
        n: number of pixel values (images x channels x height x width).
        k_origin: slope of the least-squares line through the origin, ``dx^ = k dx*``.
    """

    k: float
    intercept: float
    r2: float
    n: int
    k_origin: float


def residual_fit(dx_star: torch.Tensor, dx_hat: torch.Tensor) -> ResidualFit:
    """Fit ``dx^ = k dx* + b`` by least squares over every element (float64 sums, in chunks).

    Args:
        dx_star: adversarial perturbation x* - x, any shape.
        dx_hat: predicted perturbation x* - x^, same shape.

    Returns:
        The fit; k, intercept and k_origin are NaN when dx* is constant (no slope is defined).
    """
    if dx_star.shape != dx_hat.shape:
        raise ValueError(f"dx* {tuple(dx_star.shape)} and dx^ {tuple(dx_hat.shape)} differ in "
                         f"shape; pass both perturbations of the same images.")
    a, b = dx_star.detach().reshape(-1), dx_hat.detach().reshape(-1)
    sx = sy = sxx = syy = sxy = 0.0
    for i in range(0, a.numel(), CHUNK):
        x, y = a[i:i + CHUNK].double(), b[i:i + CHUNK].double()
        sx, sy = sx + float(x.sum()), sy + float(y.sum())
        sxx, syy, sxy = sxx + float(x @ x), syy + float(y @ y), sxy + float(x @ y)
    n = a.numel()
    if n == 0:
        return ResidualFit(math.nan, math.nan, math.nan, 0, math.nan)
    vx, vy, cxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
    if vx <= 1e-12 * max(1.0, sxx):
        return ResidualFit(math.nan, math.nan, math.nan, n, math.nan)
    k = cxy / vx
    r2 = cxy * cxy / (vx * vy) if vy > 0 else 0.0
    return ResidualFit(k, (sy - k * sx) / n, r2, n, sxy / sxx)


def _axis_limits(panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[float, dict[str, float]]:
    """Symmetric ranges: x (shared) holds every dx*; each panel's y holds 99.9% of its dx^ and at
    least the x range (so the ideal line crosses the whole panel)."""
    xlim = max((float(a.abs().max()) for a, _ in panels.values() if a.numel()), default=0.0)
    xlim = 1.02 * xlim if xlim > 0 else 1.0
    ylims = {}
    for name, (_, dx_hat) in panels.items():
        flat = dx_hat.detach().reshape(-1).abs()
        sample = flat[:: max(1, flat.numel() // 1_000_000)].double().cpu().numpy()
        ylims[name] = max(xlim, 1.02 * float(np.quantile(sample, 0.999)) if sample.size else 0.0)
    return xlim, ylims


def histogram(dx_star: torch.Tensor, dx_hat: torch.Tensor, xlim: float, ylim: float,
              bins: int = BINS) -> tuple[np.ndarray, float]:
    """Counts (bins x bins; rows dx* over [-xlim, xlim], columns dx^ over [-ylim, ylim]) and
    the fraction of pixel values inside that rectangle."""
    edges = [np.linspace(-xlim, xlim, bins + 1), np.linspace(-ylim, ylim, bins + 1)]
    counts = np.zeros((bins, bins))
    a, b = dx_star.detach().reshape(-1), dx_hat.detach().reshape(-1)
    for i in range(0, a.numel(), CHUNK):
        h, _, _ = np.histogram2d(a[i:i + CHUNK].cpu().numpy(), b[i:i + CHUNK].cpu().numpy(),
                                 bins=edges)
        counts += h
    return counts, float(counts.sum() / max(1, a.numel()))


def plot_residual(panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]], out_dir: str | Path,
                  title: str, stem: str = "residual", bins: int = BINS) -> list[Path]:
    """HGD Figure 7: one 2-D histogram (log colour scale) of dx^ against dx* per defense.

    Args:
        panels: defense name -> (dx* = x* - x, dx^ = x* - x^), tensors of one shape (N x C x H x
            W on the [0,1] pixel scale).
        out_dir: directory to write to (created).
        title: the figure title.
        stem: file name without extension.
        bins: histogram bins per axis.

    Returns:
        The paths of ``<stem>.png``, ``<stem>.svg`` and ``<stem>.csv`` (one row per defense:
        ``defense, n_pixels, k, intercept, r2, k_origin, shown_fraction``).
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("No panels to plot: pass {defense: (dx_star, dx_hat)} for at least one.")
    xlim, ylims = _axis_limits(panels)
    hists = {name: histogram(*pair, xlim, ylims[name], bins) for name, pair in panels.items()}
    fits = {name: residual_fit(*pair) for name, pair in panels.items()}
    vmax = max(max(h.max() for h, _ in hists.values()), 1.0)
    cols = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.4 * cols + 1.0, 4.2 * rows + 0.4), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    grid = np.linspace(-xlim, xlim, 2)
    mesh = None
    for ax, (name, (counts, _)) in zip(axes, hists.items(), strict=False):
        fit, ylim = fits[name], ylims[name]
        mesh = ax.pcolormesh(np.linspace(-xlim, xlim, bins + 1), np.linspace(-ylim, ylim, bins + 1),
                             np.ma.masked_equal(counts.T, 0), cmap="viridis",
                             norm=LogNorm(vmin=1, vmax=vmax), rasterized=True)
        ax.plot(grid, grid, "k--", linewidth=1, label=r"ideal $\hat{dx} = dx^*$")
        if math.isfinite(fit.k):
            ax.plot(grid, fit.k * grid + fit.intercept, "r-", linewidth=1.5,
                    label=f"fit: k = {fit.k:.3f}, b = {fit.intercept:+.4f}")
        ax.set(xlim=(-xlim, xlim), ylim=(-ylim, ylim),
               xlabel=r"adversarial perturbation $dx^* = x^* - x$",
               ylabel=r"predicted perturbation $\hat{dx} = x^* - \hat{x}$",
               title=f"{name}: k = {fit.k:.3f}, b = {fit.intercept:+.4f}, R² = {fit.r2:.2f}")
        ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(mesh, ax=list(axes), label="pixels per bin (log scale)", shrink=0.85)
    # about 11 characters per inch at the default 12 pt: wrapped, a long title fits one panel
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)))
    paths = save_figure(fig, out_dir, stem)
    return [*paths, _write_fits_csv(fits, {k: v[1] for k, v in hists.items()},
                                    Path(out_dir) / f"{stem}.csv")]


def _write_fits_csv(fits: Mapping[str, ResidualFit], shown: Mapping[str, float],
                    path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["defense", "n_pixels", "k", "intercept", "r2", "k_origin", "shown_fraction"])
        for name, fit in fits.items():
            d = asdict(fit)
            w.writerow([name, fit.n, *(repr(float(d[c])) for c in ("k", "intercept", "r2",
                                                                    "k_origin")),
                        repr(shown[name])])
    return path


def plot_figure7(session: Session, attack: str, eps: float | None, defenses: Sequence[str],
                 out_dir: Path) -> list[Path]:
    """HGD's Figure 7 for ``session``: one panel per preprocessing defense, on the oblivious
    ``attack`` at ``eps`` (the dataset's default when None). Returns the PNG, SVG and CSV paths."""
    eps, x, x_adv = oblivious_set(session, attack, eps)
    panels = {name: (x_adv - x, x_adv - session.apply(session.defense(name), x_adv))
              for name in preprocessors(defenses, "residual")}
    stem = file_stem("residual", session.info.name, session.model_name, attack)
    title = (f"Adversarial vs predicted perturbation on {session.info.name}/{session.model_name}: "
             f"oblivious {attack} eps={format_eps(eps)}, n={len(x)} images")
    return plot_residual(panels, out_dir, title, stem)
