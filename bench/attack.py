"""The attack contract and the checks every adversarial batch passes before it is recorded.

An attack is called with a differentiable model (``[0,1]`` images in, logits out), images ``x``
(N x C x H x W in [0,1]) and labels ``y`` (N), and returns ``x_adv`` with
``||x_adv - x||_inf <= eps`` (+1e-6), ``x_adv`` in [0,1] and finite, without mutating ``x``.
While it runs, the model is in eval mode and its parameters are frozen (no weight gradients);
both are restored afterwards. Subclasses implement :meth:`Attack.perturb` only.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import AttackValidationError, ConfigError
from bench.registry import registered_name, registered_params
from bench.runtime import rng_isolated

TOLERANCE = 1e-6
TARGET_MODES = (None, "random", "least-likely")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit, each
    submodule's mode as it was (a wrapper built in training mode around models in eval mode,
    such as a pipeline, must not leave them training: a BatchNorm would then update its
    statistics on the next forward)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for p, g in grads:
            p.grad = g
        for m, mode in modes:
            m.training = mode


def validate_adversarial(x: torch.Tensor, x_adv: torch.Tensor, eps: float,
                         what: str = "attack") -> None:
    """Raise AttackValidationError unless ``x_adv`` is finite, in [0,1] and in the L-inf ball."""
    if x_adv.shape != x.shape:
        raise AttackValidationError(f"{what} returned shape {tuple(x_adv.shape)} for inputs "
                                    f"{tuple(x.shape)}; nothing was recorded.")
    if not torch.isfinite(x_adv).all():
        raise AttackValidationError(f"{what} returned NaN or infinite pixels; nothing was "
                                    f"recorded. Check the model's outputs for NaN.")
    if not x_adv.numel():
        return
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        raise AttackValidationError(f"{what} left the [0,1] pixel range (min {lo:.6g}, max "
                                    f"{hi:.6g}); nothing was recorded.")
    dist = float((x_adv - x.to(x_adv.device)).abs().max()) if x.numel() else 0.0
    if dist > eps + TOLERANCE:
        raise AttackValidationError(f"{what} left the L-inf ball: ||x_adv - x|| = {dist:.6g} > eps "
                                    f"{eps:.6g}; nothing was recorded.")


class Attack(ABC):
    """Base class of every attack plugin.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: step size; None uses the attack's documented default rule.
        targeted: None (untargeted), ``random`` or ``least-likely`` target class.
        seed: seed of the attack's randomness (random starts, random targets).
    """

    norm: ClassVar[str] = "linf"
    gradient_free: ClassVar[bool] = False
    #: A control that is not expected to lower accuracy (random noise): the attack contract
    #: tests require every other attack to lower a trained model's accuracy, not this one.
    baseline: ClassVar[bool] = False
    #: What ``bench audit`` uses the attack for, when anything: ``single-step`` (one gradient
    #: step, compared with iterative ones), ``iterative`` (the gradient attack whose steps are
    #: doubled, whose eps is swept, and which runs unbounded and as a transfer attack),
    #: ``score-based`` (a gradient-free attack on the defended model's scores), ``noise`` (the
    #: random control). The audit picks each role's registered variant (see bench/audit.py).
    audit_role: ClassVar[str | None] = None
    #: Whether an image's adversarial example depends on that image and label alone, never on
    #: the other images of its batch: true of an attack that draws no randomness. Then
    #: :meth:`perturb_rows` attacks only the rows asked for (the images still correct). An
    #: attack that draws random starts for the whole batch overrides :meth:`perturb_rows`
    #: instead (drawing the same stream and keeping the rows' part of it).
    row_independent: ClassVar[bool] = False

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0) -> None:
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"eps {eps} is outside [0, 1]: use the [0,1] pixel scale, e.g. "
                              f"--eps 8/255.")
        if targeted not in TARGET_MODES:
            raise ConfigError(f"targeted={targeted!r}: use 'random' or 'least-likely'.")
        self.eps = float(eps)
        self.alpha = alpha
        self.targeted = targeted
        self.seed = seed

    @property
    def name(self) -> str:
        return registered_name(self)

    def describe(self) -> dict[str, Any]:
        """The resolved parameters recorded in the result row."""
        params = {k: v for k, v in registered_params(self).items() if k != "eps"}
        return {**params, "alpha": self.step_size(), "targeted": self.targeted}

    def step_size(self) -> float | None:
        """The step size used (``alpha`` or the attack's default rule)."""
        return self.alpha

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial images for ``x``; ``y`` holds the true labels."""

    def perturb_rows(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
        """Adversarial images for rows ``rows`` (indices) of the batch ``x``: exactly
        ``perturb(model, x, y)[rows]`` (the same random stream, the same targets), computed on
        those rows only when that is exact, so that an image the defended model already
        misclassifies need not be attacked. The default attacks only ``rows`` when the attack
        is :attr:`row_independent` (and its targets are not drawn at random for the batch),
        else the whole batch."""
        if self.row_independent and self.targeted != "random":
            return self.perturb(model, x[rows], y[rows])
        return self.perturb(model, x, y)[rows]

    def target_labels(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Target classes for the targeted modes (never the true label)."""
        with torch.no_grad():
            logits = model(x)
        k = logits.shape[1]
        if self.targeted == "least-likely":
            return logits.scatter(1, y.view(-1, 1), float("inf")).argmin(1)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        shift = torch.randint(1, k, y.shape, generator=gen).to(y.device)
        return (y + shift) % k

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 seed: int | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attack ``model`` on ``(x, y)``, validate the result and return it (detached).

        With ``rows`` (indices into the batch), only those images are adversarial, exactly as
        they would be had the whole batch been attacked (:meth:`perturb_rows`); the others are
        returned unchanged.

        The attack's randomness comes from torch's global RNG seeded with ``seed`` (default: the
        attack's own), forked so the caller's random stream is the same after the call: code that
        runs after an attack (a defense's fit after making its adversarial set) must not depend on
        whether the attack ran or its result came from the cache."""
        x_in = x.detach().clone()
        with rng_isolated(x.device), frozen(model):
            if torch.is_autocast_enabled(x.device.type):  # --attack-precision bf16
                model = Float32Logits(model)
            torch.manual_seed(self.seed if seed is None else seed)
            if rows is None:
                x_adv = self.perturb(model, x_in, y.detach().clone())
            else:
                x_adv = x_in.clone()
                if len(rows):
                    x_adv[rows] = self.perturb_rows(model, x_in, y.detach().clone(), rows)
        if not torch.equal(x_in, x):
            raise AttackValidationError(f"{self.name} mutated its input images; fix the plugin.")
        x_adv = x_adv.detach().to(x.dtype)
        validate_adversarial(x, x_adv, self.eps, self.name)
        return x_adv


class Float32Logits(nn.Module):
    """``model`` with its outputs cast to float32: what an attack sees under bf16 autocast
    (``--attack-precision bf16``), where the model computes in bfloat16. Logits left in
    bfloat16 break attacks that write them into float32 buffers or convert them to NumPy
    (torchattacks' Square and APGD-T); the gradient flows through the cast unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


class TorchAttack(Attack):
    """Base for thin wrappers over a ``torchattacks`` class.

    Subclasses implement :meth:`make` returning the configured torchattacks object; targeting,
    seeding and validation are handled here.
    """

    @abstractmethod
    def make(self, model: nn.Module) -> Any:
        """The configured torchattacks object for ``model``."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        atk = self.make(model)
        if self.targeted == "random":
            atk.set_mode_targeted_by_function(lambda im, lab: self.target_labels(model, im, lab),
                                              quiet=True)
        elif self.targeted == "least-likely":
            atk.set_mode_targeted_by_function(lambda im, lab: self.target_labels(model, im, lab),
                                              quiet=True)
        return atk(x, y)
