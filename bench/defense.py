"""The defense contract: an ``nn.Module`` of one of two kinds.

* ``preprocessor``: ``forward(x) -> x_hat``, same shape, in [0,1]; put in front of the classifier.
* ``model``: ``forward(x) -> logits``; a whole classifier that replaces the dataset's default one.
  A ``model`` defense may take a constructor parameter ``model``: the session passes the target
  classifier's name (unless an option sets it) so it can build the same architecture.

A defense declares whether it is ``differentiable`` (when not, :meth:`Defense.attack_forward`
gives the attacker a BPDA approximation while leaving the forward result unchanged), whether it
is ``randomized``, which inputs it ``supports``, and whether it ``needs_training``. Trainable
defenses implement :meth:`Defense.fit` with their paper's recipe; the harness caches the weights
by a hash of everything that determined them (:func:`fit_or_load`). :meth:`Defense.training_loss`
measures what ``fit`` minimizes, so that the contract kit (:mod:`bench.testing`) can check that
``fit`` really trains.

A composite defense (an ensemble, HGD's Appendix C) names the registered defenses and the
classifiers it is made of in :meth:`Defense.parts`; the harness fits or loads each part as it
would alone (same weights, same cache entries, their identities in the composite's) and hands
them to :meth:`Defense.compose` before the composite's first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench.cache import Cache, stable_hash
from bench.data import BenchDataset, DatasetInfo, gather
from bench.errors import ConfigError, PluginContractError
from bench.registry import recorded_class, registered_name, registered_params

log = logging.getLogger(__name__)
PREPROCESSOR = "preprocessor"
MODEL = "model"


class _StraightThrough(torch.autograd.Function):
    """Forward: ``fn(x)``. Backward: identity (BPDA with the identity as surrogate)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


def bpda_identity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return ``y`` (computed from ``x`` without gradient) with the identity as its gradient."""
    return _StraightThrough.apply(x, y.detach())


@dataclass(frozen=True)
class Parts:
    """What a composite defense is made of (:meth:`Defense.parts`).

    Attributes:
        defenses: registered defenses, each ``NAME`` (trained against the row's classifier, as
            alone) or ``NAME@MODEL`` (a trainable defense trained against the dataset's model
            ``MODEL``, HGD's Table 4 setting); fitted by the harness, in this order.
        models: classifiers of the dataset by name, loaded (or trained) by the harness.
    """

    defenses: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


def split_spec(spec: str) -> tuple[str, str | None]:
    """``NAME@MODEL`` -> (NAME, MODEL); ``NAME`` -> (NAME, None) (see :class:`Parts`)."""
    name, at, model = spec.partition("@")
    return name, (model if at else None)


class LazyModels(Sequence[nn.Module]):
    """A sequence of models made on first use: ``make()`` runs once, at the first ``len``, index
    or iteration. :class:`FitContext` gets its surrogates this way, so classifiers trained on
    demand are trained only for the defenses that use them.
    """

    def __init__(self, make: Callable[[], Sequence[nn.Module]]) -> None:
        self._make: Callable[[], Sequence[nn.Module]] | None = make
        self._models: list[nn.Module] = []

    @property
    def made(self) -> bool:
        """Whether the models exist yet."""
        return self._make is None

    def _get(self) -> list[nn.Module]:
        if self._make is not None:
            self._models, self._make = list(self._make()), None
        return self._models

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return f"LazyModels({self._models!r})" if self.made else "LazyModels(<not made yet>)"


@dataclass
class FitContext:
    """Everything a defense's ``fit`` may use. Built by the runner (or the ``train`` command).

    Attributes:
        dataset: the dataset the defense is trained for.
        classifier: the fixed target classifier (``forward_features``/``forward_head``).
        surrogates: other classifiers trained on the same data (HGD's "other models"); a list
            or a :class:`LazyModels` (the runner's: made at first use, so a defense that never
            touches them does not make the harness train them).
        device: where to train.
        cache: the weight cache (defenses may memoize intermediate tensors there).
        seed: training seed.
        key: what identifies the classifier(s) and data; part of every weight-cache key.
        fit_images: training images a recipe uses (None: the dataset's ``fit_images``).
        precision: ``fp32``, ``tf32`` or ``bf16`` (``--train-precision``): ``fit`` runs inside
            :func:`bench.accel.precision_scope` at it (named in ``key`` when not fp32).
    """

    dataset: BenchDataset
    classifier: nn.Module
    surrogates: Sequence[nn.Module]
    device: torch.device
    cache: Cache
    seed: int = 0
    key: dict[str, Any] = field(default_factory=dict)
    fit_images: int | None = None
    precision: str = "fp32"

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a CPU batch) on :attr:`device`: through pinned memory with a non-blocking copy
        on CUDA (:func:`bench.accel.to_device`), a plain ``.to`` elsewhere."""
        from bench.accel import to_device

        return to_device(t, self.device)

    @property
    def budget(self) -> int:
        """How many training images a defense's recipe uses here."""
        return int(self.fit_images or self.info.fit_images)

    def train_tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training images (default: :attr:`budget`), drawn by a fixed permutation so
        that small subsets still cover every class."""
        n = n or self.budget
        train = self.dataset.split("train")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234))[:n]
        return gather(train, order)  # only those images are read


class Defense(nn.Module):
    """Base class of every defense plugin.

    Args:
        input_shape: C x H x W of the dataset's images.
        num_classes: number of classes of the dataset.
    """

    kind: ClassVar[str] = PREPROCESSOR
    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False
    identity: ClassVar[bool] = False
    channels: ClassVar[tuple[int, ...] | None] = None
    min_size: ClassVar[int] = 1
    #: Registered attacks written against this defense (Tramer et al. 2020: adaptive attacks are
    #: defense-specific); every attack suite runs them first, whitebox, on this defense only.
    adaptive_attacks: ClassVar[tuple[str, ...]] = ()
    #: Constructor options this defense takes from its dataset's ``fit_recipe`` when neither the
    #: run nor its variant sets them (a small data set's shorter recipe, e.g. ``digits``'); they
    #: are then its parameters like any option (weight key, identity, every row).
    dataset_recipe: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        why = self.unsupported(self.input_shape)
        if why:
            raise ConfigError(f"{type(self).__name__} cannot run on inputs {self.input_shape}: "
                              f"{why}.")

    @classmethod
    def unsupported(cls, input_shape: Sequence[int]) -> str | None:
        """Why this defense cannot take inputs of ``input_shape`` (None when it can)."""
        if cls.channels is not None and input_shape[0] not in cls.channels:
            return f"it needs {cls.channels} channels"
        if min(input_shape[1:]) < cls.min_size:
            return f"it needs images of at least {cls.min_size}x{cls.min_size}"
        return None

    def attack_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What an adaptive (whitebox) attacker differentiates: the forward pass, or BPDA.

        The default is the forward pass when ``differentiable``, else the forward result with the
        identity as its gradient. Override to give a better differentiable surrogate; it must
        return the same values as ``forward``.
        """
        out = self(x)
        return out if self.differentiable else bpda_identity(x, out)

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Train with the paper's recipe; return metadata stored beside the cached weights."""
        return {}

    def parts(self, models: Sequence[str]) -> Parts:
        """A composite defense's parts (default: none). ``models`` are the dataset's
        classifiers, the row's target first."""
        return Parts()

    def compose(self, defenses: Sequence[Defense], models: Sequence[nn.Module]) -> None:
        """Receive the fitted parts named by :meth:`parts`, in its order (composites only)."""
        raise PluginContractError(f"{type(self).__name__} names parts but does not take them: "
                                  f"implement compose().")

    def denoising_loss(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image mean L1 distance between denoised ``x_hat`` and clean ``x`` (HGD Table 2)."""
        return (x_hat - x).abs().flatten(1).mean(1)

    @torch.no_grad()
    def training_loss(self, ctx: FitContext) -> float:
        """The objective :meth:`fit` lowers, measured on the data it trains on (lower is better;
        no gradient; in the module's current mode). The contract kit measures it before and
        after ``fit`` and fails a trainable defense whose ``fit`` does not lower it
        (``python -m bench check NAME``).

        The default, over ``ctx.train_tensors()``: a ``model`` defense's cross-entropy; a
        preprocessor's mean :meth:`denoising_loss` of its output on the clean images. Override
        it where ``fit`` minimizes something else (a loss on attacked images, through the
        classifier, or a GAN's generator loss)."""
        x, y = ctx.train_tensors()
        total = 0.0
        for start in range(0, len(x), 256):
            xb, yb = ctx.on_device(x[start:start + 256]), ctx.on_device(y[start:start + 256])
            out = self(xb)
            loss = (nn.functional.cross_entropy(out.float(), yb, reduction="sum")
                    if self.kind == MODEL else self.denoising_loss(out, xb).sum())
            total += float(loss)
        return total / max(1, len(x))

    def metadata(self) -> dict[str, Any]:
        """Facts recorded in every result row (e.g. what was scaled down from the paper)."""
        return {}

    def cache_key(self) -> dict[str, Any]:
        """What determines this defense's trained weights, besides the classifier and data."""
        return {"class": recorded_class(type(self)),  # the pre-move path: old hashes hold
                "params": registered_params(self), "shape": self.input_shape}


def weights_key(defense: Defense, context: dict[str, Any], seed: int,
                fit_images: int) -> dict[str, Any]:
    """Everything that determines ``defense``'s trained weights: its class, parameters and input
    shape, the classifier(s) and data it is trained against (``context``, as
    :attr:`FitContext.key`), the seed and the training budget. The cache key of its weights, and
    part of the identity of every cell that evaluates it; known without training."""
    return {**defense.cache_key(), "context": context, "seed": seed, "fit_images": fit_images}


def fit_or_load(defense: Defense, ctx: FitContext, retrain: bool = False) -> dict[str, Any]:
    """Load ``defense``'s cached weights, or train it with ``fit`` and cache them.

    Returns the metadata of the training run (from the cache on a hit).
    """
    if not defense.needs_training:
        return {}
    name = registered_name(defense)
    key = weights_key(defense, ctx.key, ctx.seed, ctx.budget)
    prefix = f"{ctx.info.name}-{name}"
    if not retrain:
        meta = ctx.cache.load_module(defense, "defenses", prefix, key)
        if meta is not None:
            defense.to(ctx.device).eval()
            return meta
    log.info("training defense %s on %s (cached afterwards under %s) ...", name, ctx.info.name,
             ctx.cache.root)
    torch.manual_seed(ctx.seed)
    defense.to(ctx.device)
    from bench.accel import precision_scope

    with precision_scope(ctx.device, ctx.precision, training=True):  # bf16 or TF32 if asked
        meta = defense.fit(ctx) or {}
    defense.eval()
    if ctx.precision != "fp32":
        meta["precision"] = ctx.precision
    meta["weights_hash"] = stable_hash(key)
    ctx.cache.save_module(defense, "defenses", prefix, key, meta)
    return meta


@torch.no_grad()
def check_output(defense: Defense, name: str, probe: torch.Tensor) -> None:
    """Check once what ``defense`` returns for ``probe`` (a few real images, N x C x H x W in
    [0,1]): a preprocessor must return finite images of the same shape in [0,1], a model-kind
    defense finite logits N x num_classes. A one-line :class:`PluginContractError` naming the
    plugin otherwise, before any number is computed with it."""
    out = defense(probe)
    where = f"Defense '{name}' ({type(defense).__module__})"
    fix = "fix the plugin (see the defense contract in docs/plugins.md)"
    if not isinstance(out, torch.Tensor):
        raise PluginContractError(f"{where} returned {type(out).__name__}, not a tensor; {fix}.")
    if defense.kind == MODEL:
        want = (len(probe), defense.num_classes)
        if tuple(out.shape) != want:
            raise PluginContractError(f"{where} returned logits of shape {tuple(out.shape)} for "
                                      f"{len(probe)} images; a model defense returns {want}; "
                                      f"{fix}.")
    elif out.shape != probe.shape:
        raise PluginContractError(f"{where} returned shape {tuple(out.shape)} for inputs "
                                  f"{tuple(probe.shape)}: a preprocessor returns images of its "
                                  f"input's shape in [0,1]; {fix}.")
    if not torch.isfinite(out).all():
        raise PluginContractError(f"{where} returned NaN or infinite values on clean test "
                                  f"images; {fix}.")
    if defense.kind != MODEL and (out.min() < -1e-6 or out.max() > 1 + 1e-6):
        raise PluginContractError(f"{where} returned pixels in [{float(out.min()):.4g}, "
                                  f"{float(out.max()):.4g}], outside [0,1]: clamp its output; "
                                  f"{fix}.")
