"""Layer-wise error amplification (HGD, Liao et al. CVPR 2018, Figure 5), for any ``nn.Module``.

For a perturbed image x_p and its clean image x, the amplification at layer l of a classifier f is
``E_l = ||f_l(x_p) - f_l(x)||_2 / ||f_l(x)||_2``, averaged over images. HGD plots it for
adversarial images, Gaussian noise of the same norm, and the outputs of pixel-guided and
logit-guided denoisers: the residual noise left by pixel denoisers grows with depth.

Layers are found generically with forward hooks on every leaf module that computes something.

Example::

    curves, dashed = figure5_curves(f, x, x_adv, {"denoiser": denoiser(x_adv)})
    plot_amplification(curves, out_dir, "digits / cnn, PGD eps 0.3", "amplification", dashed)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.analysis.common import oblivious_set, preprocessors
from bench.analysis.figures import file_stem, save_figure
from bench.config import format_eps

if TYPE_CHECKING:
    from bench.session import Session

SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
           nn.FeatureAlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten,
           nn.Sequential, nn.ModuleList, nn.ModuleDict)
MAX_TICK_LABELS = 40


def probed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules of ``model`` whose outputs :func:`layer_outputs` records, by path."""
    return [(name, m) for name, m in model.named_modules()
            if name and not any(True for _ in m.children()) and not isinstance(m, SKIPPED)]


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@torch.no_grad()
def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every computing leaf module of ``model`` for one forward pass of ``x``.

    Hooks are put on Conv, Linear, pooling, normalization and activation layers (every leaf but
    Dropout, Identity, Flatten). The model runs in eval mode (its mode is restored afterwards),
    without gradient; outputs are cloned, so in-place activations do not alter earlier entries.

    Args:
        model: any module taking ``x``.
        x: a batch, N x C x H x W in [0,1] for an image classifier.

    Returns:
        Module path -> output (N x ...), in forward (call) order. A module called more than once
        gets ``path#2``, ``path#3``... for its later calls.
    """
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                return
            key, k = name, 1
            while key in outputs:
                k += 1
                key = f"{name}#{k}"
            outputs[key] = tensor.detach().clone()
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in probed_modules(model)]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return outputs


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).double().norm(dim=1)


def amplification(model: nn.Module, x: torch.Tensor, x_perturbed: torch.Tensor,
                  batch_size: int = 64) -> dict[str, float]:
    """Layer-wise error amplification ``E_l = mean_i ||f_l(x_p,i) - f_l(x_i)|| / ||f_l(x_i)||``.

    Norms are L2 over all non-batch dimensions of layer l's output. Images whose clean output at a
    layer is exactly zero are left out of that layer's mean (the ratio is undefined).

    Args:
        model: the classifier f (any module; see :func:`layer_outputs`).
        x: clean images, N x C x H x W in [0,1].
        x_perturbed: the perturbed images, same shape (adversarial, noisy or denoised).
        batch_size: images per forward pass (memory bound: every layer's output is kept).
            Batches are moved to the device of the model's parameters.

    Returns:
        Layer path -> E_l (>= 0), ordered by depth (forward order); NaN where no image counted.
    """
    if x.shape != x_perturbed.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_perturbed {tuple(x_perturbed.shape)} differ "
                         f"in shape; pass the perturbed version of each clean image.")
    device = next(model.parameters(), x).device
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(x), batch_size):
        clean = layer_outputs(model, x[start:start + batch_size].to(device))
        pert = layer_outputs(model, x_perturbed[start:start + batch_size].to(device))
        for name, ref in clean.items():
            denom = _per_image_norm(ref)
            keep = denom > 0
            ratio = _per_image_norm(pert[name] - ref)[keep] / denom[keep]
            sums[name] = sums.get(name, 0.0) + float(ratio.sum())
            counts[name] = counts.get(name, 0) + int(keep.sum())
    return {name: (sums[name] / counts[name] if counts[name] else math.nan) for name in sums}


def gaussian_like(x: torch.Tensor, x_adv: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian-noise images whose noise has the adversarial perturbation's per-image L2 norm.

    Returns ``clip(x + s_i * u_i, 0, 1)`` with ``u_i`` an i.i.d. Gaussian direction and the scale
    ``s_i`` found by bisection so that the noise actually added, after clipping to [0,1], has
    ``||clip(x_i + s_i u_i) - x_i||_2 = ||x_adv,i - x_i||_2``. Rescaling before clipping is not
    enough: on MNIST 82% of the pixels are 0, clipping removes half of the noise there and leaves
    only ~73% of the norm, which would understate the random-noise curve of HGD's Figure 5.
    Where no scale reaches the norm (the box [0,1] is too small), the largest reachable is used.

    Args:
        x: clean images, N x C x H x W in [0,1].
        x_adv: adversarial images, same shape, in [0,1].
        generator: random source (its device is used to draw the noise); None: the global one.

    Returns:
        Noisy images, same shape as ``x``, in [0,1].
    """
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device).to(x.device, x.dtype)
    shape = (-1, *([1] * (x.dim() - 1)))
    unit = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    target = (x_adv - x).flatten(1).double().norm(dim=1)

    def clipped_norm(scale: torch.Tensor) -> torch.Tensor:
        added = (x + scale.to(x.dtype).view(shape) * unit).clamp(0.0, 1.0) - x
        return added.flatten(1).double().norm(dim=1)

    lo = torch.zeros_like(target)
    hi = target.clone()  # clipping only shortens: the clipped norm at scale ``target`` <= target
    for _ in range(64):  # grow hi until it reaches the target (or the box is saturated)
        short = clipped_norm(hi) < target
        if not short.any():
            break
        hi = torch.where(short, hi * 2, hi)
    for _ in range(60):  # bisection on the monotone clipped norm
        mid = (lo + hi) / 2
        below = clipped_norm(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (x + hi.to(x.dtype).view(shape) * unit).clamp(0.0, 1.0)


NOISE = "random noise"


def figure5_curves(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                   denoised: Mapping[str, torch.Tensor] | None = None,
                   generator: torch.Generator | None = None, matched_noise: bool = False
                   ) -> tuple[dict[str, dict[str, float]], dict[str, str | None]]:
    """The curves of HGD's Figure 5, relative to the clean images ``x``.

    Args:
        model: the target classifier f.
        x: clean images, N x C x H x W in [0,1].
        x_adv: their adversarial versions, same shape, in [0,1].
        denoised: defense name -> that defense's output for ``x_adv`` (curve ``<name>
            (denoised)``).
        generator: random source of the Gaussian-noise curves.
        matched_noise: also, per defense, Gaussian noise with the norm of its residual
            ``x^ - x`` (curve ``random noise, <name>'s norm``, dashed in the defense's colour).

    Returns:
        ``(curves, dashed)`` for :func:`plot_amplification`: ``{"adversarial": E, "random noise":
        E, "<name> (denoised)": E, ...}`` and the dashed reference curves.
    """
    curves = {"adversarial": amplification(model, x, x_adv),
              NOISE: amplification(model, x, gaussian_like(x, x_adv, generator))}
    dashed: dict[str, str | None] = {NOISE: None}
    for name, x_hat in (denoised or {}).items():
        curve = f"{name} (denoised)"
        curves[curve] = amplification(model, x, x_hat)
        if matched_noise:
            label = f"{NOISE}, {name}'s norm"
            curves[label] = amplification(model, x, gaussian_like(x, x_hat, generator))
            dashed[label] = curve
    return curves, dashed


def plot_figure5(session: Session, attack: str, eps: float | None, defenses: Sequence[str],
                 out_dir: Path, matched_noise: bool = False) -> list[Path]:
    """HGD's Figure 5 for ``session``'s classifier: the oblivious ``attack`` at ``eps`` (the
    dataset's default when None) on the evaluated slice, each preprocessing defense's output, and
    Gaussian noise references. Returns the PNG, SVG and CSV paths."""
    eps, x, x_adv = oblivious_set(session, attack, eps)
    denoised = {name: session.apply(session.defense(name), x_adv)
                for name in preprocessors(defenses, "amplification")}
    gen = torch.Generator().manual_seed(session.seed)
    curves, dashed = figure5_curves(session.classifier, x, x_adv, denoised, gen, matched_noise)
    stem = file_stem("amplification", session.info.name, session.model_name, attack)
    title = (f"Error amplification on {session.info.name}/{session.model_name}: {attack} "
             f"eps={format_eps(eps)}, n={len(x)}")
    return plot_amplification(curves, out_dir, title, stem, dashed)


def _layer_order(curves: Mapping[str, Mapping[str, float]]) -> list[str]:
    layers: dict[str, None] = {}
    for curve in curves.values():
        layers.update(dict.fromkeys(curve))
    return list(layers)


def write_curves_csv(curves: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Write ``layer, depth, <curve>...`` rows (empty where a curve lacks the layer)."""
    layers = _layer_order(curves)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["layer", "depth", *curves])
        for depth, layer in enumerate(layers):
            w.writerow([layer, depth, *(repr(float(c[layer])) if layer in c else ""
                                        for c in curves.values())])
    return path


def plot_amplification(curves: Mapping[str, Mapping[str, float]], out_dir: str | Path,
                       title: str = "Layer-wise error amplification",
                       stem: str = "amplification",
                       dashed: Mapping[str, str | None] | None = None) -> list[Path]:
    """Plot E_l against layer depth, one line per curve (HGD Figure 5).

    Args:
        curves: curve name (e.g. ``adversarial``, ``gaussian``, a defense name) -> the
            :func:`amplification` dict. Layers are aligned by name, in first-seen order.
        out_dir: directory to write to (created).
        title: the figure title.
        stem: file name without extension.
        dashed: reference curves (e.g. random noise) drawn dashed: curve name -> the name of
            the curve whose colour it takes (plotted earlier), or None for a colour of its own.

    Returns:
        The paths of ``<stem>.png``, ``<stem>.svg`` and ``<stem>.csv`` (columns ``layer, depth``
        then one per curve). The y axis is logarithmic when the positive values span more than
        two decades.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("No curves to plot: pass {name: amplification(...)} for at least one.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = _layer_order(curves)
    # The legend goes right of the axes (inside, it hid the top layers' values on deep models).
    fig = Figure(figsize=(min(4 + 0.25 * len(layers), 18) + 2.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    positive = []
    dashed = dashed or {}
    colours: dict[str, Any] = {}
    for name, curve in curves.items():
        depth = [i for i, layer in enumerate(layers) if layer in curve]
        values = [float(curve[layers[i]]) for i in depth]
        positive += [v for v in values if v > 0 and math.isfinite(v)]
        style = {"linestyle": "--"} if name in dashed else {}
        if dashed.get(name) in colours:
            style["color"] = colours[dashed[name]]
        (line,) = ax.plot(depth, values, marker="o", markersize=3, linewidth=1.5, label=name,
                          **style)
        colours[name] = line.get_color()
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    step = max(1, math.ceil(len(layers) / MAX_TICK_LABELS))
    ax.set_xticks(range(0, len(layers), step), layers[::step], rotation=60, ha="right",
                  fontsize=7)
    ax.set(xlabel="layer (forward order)", ylabel=r"$E_l = \|f_l(x_p) - f_l(x)\| / \|f_l(x)\|$",
           title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return [*save_figure(fig, out, stem), write_curves_csv(curves, out / f"{stem}.csv")]
