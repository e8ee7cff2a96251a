"""The classifier training loop and the prediction helpers it reports with."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.accel import to_device
from bench.runtime import batches, check_finite, progress


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500,
            device: torch.device | None = None) -> torch.Tensor:
    """Predicted labels of ``model`` for images ``x`` (N x C x H x W in [0,1]), on CPU."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for idx in batches(len(x), batch_size):
        logits = model(to_device(x[idx], device))
        out.append(check_finite(logits, type(model).__name__).argmax(1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0,1]."""
    return float((predict(model, x, batch_size) == y).float().mean()) if len(y) else float("nan")


@torch.enable_grad()  # trained on demand, possibly from inside an evaluation's no_grad
def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                     lr: float, batch_size: int, seed: int, desc: str,
                     weight_decay: float = 0.0, device: torch.device | None = None
                     ) -> dict[str, Any]:
    """Train ``model`` with Adam and cross-entropy; return a metadata dict (final loss).

    Args:
        model: classifier taking [0,1] images, returning logits.
        x: training images, N x C x H x W in [0,1].
        y: labels, N.
    """
    device = device or next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    model.train()
    loss_avg = float("nan")
    bar = progress(total=epochs * ((len(x) + batch_size - 1) // batch_size), desc=desc)
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in batches(len(x), batch_size, gen, shuffle=True):
            xb, yb = to_device(x[idx], device), to_device(y[idx], device)
            loss = F.cross_entropy(model(xb), yb)
            check_finite(loss, f"training {desc}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.3f}")
        sched.step()
        loss_avg = total / max(1, count)
    bar.close()
    model.eval()
    return {"final_loss": loss_avg, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "train_images": len(x)}
