"""A (dataset, classifier) session: the objects every command needs, built lazily and cached.

It owns the test slice, the target classifier (trained on demand), the surrogate models, fitted
defenses, and the adversarial sets already computed, so that a grid, a plot or a training command
never repeats work: oblivious adversarial examples are computed once per (attack, classifier,
slice) and reused by every defense, on disk across runs too.
"""

from __future__ import annotations

import inspect
import logging
from functools import cached_property
from typing import Any

import torch
from torch import nn

from bench.attack import Attack
from bench.cache import Cache, stable_hash
from bench.data import BenchDataset, get_dataset
from bench.defense import Defense, FitContext, LazyModels, fit_or_load
from bench.models import LoadedModel, PendingClassifier, load_classifier, recipe_options
from bench.registry import ATTACKS, DEFENSES
from bench.runtime import batches, check_finite, progress

log = logging.getLogger(__name__)


def accepted(builder: Any, options: dict[str, Any], scope: str) -> dict[str, Any]:
    """The options meant for the plugin ``scope``: ``scope.key=v`` always, bare ``key=v`` when the
    plugin's constructor takes ``key``."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {}
    for key, value in options.items():
        name, dot, param = key.rpartition(".")
        if dot and name == scope:
            out[param] = value
        elif not dot and (key in params or takes_any):
            out[key] = value
    return out


def takes(builder: Any, param: str) -> bool:
    """Whether ``builder``'s signature names the parameter ``param``."""
    try:
        return param in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False


def baseline_name() -> str:
    """The registered undefended baseline: the first defense declaring ``identity``."""
    for entry in DEFENSES.entries():
        if getattr(entry.builder, "identity", False):
            return entry.name
    raise LookupError("no identity (undefended) defense is registered")


class Session:
    """Lazily built state for one dataset and target model.

    Args:
        dataset: dataset name or object.
        model: target classifier name (default: the dataset's first model).
        n: evaluate the first ``n`` test images (all when None).
    """

    def __init__(self, dataset: str | BenchDataset, model: str | None = None, *,
                 n: int | None = None, seed: int = 0, device: torch.device | None = None,
                 cache: Cache | None = None, data_root: str | None = None, download: bool = False,
                 batch_size: int = 250, defense_opts: dict[str, Any] | None = None,
                 model_opts: dict[str, Any] | None = None, fit_images: int | None = None) -> None:
        self.dataset = (dataset if isinstance(dataset, BenchDataset)
                        else get_dataset(dataset, root=data_root, download=download))
        self.info = self.dataset.info
        self.model_name = model or self.info.models[0]
        self.n = n
        self.seed = seed
        self.device = device or torch.device("cpu")
        self.cache = cache or Cache()
        self.batch_size = batch_size
        self.defense_opts = dict(defense_opts or {})
        self.model_opts = dict(model_opts or {})
        self.fit_images = fit_images
        self._defenses: dict[str, Defense] = {}
        self._fit_meta: dict[str, dict[str, Any]] = {}
        self._adv: dict[str, torch.Tensor] = {}

    # -- data and models ----------------------------------------------------------------------
    @cached_property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluated slice: the first ``n`` test images and labels (CPU tensors)."""
        return self.dataset.tensors("test", self.n, copies=3)  # clean, adversarial, defended

    @cached_property
    def target(self) -> LoadedModel:
        return load_classifier(self.model_name, self.dataset, cache=self.cache, device=self.device,
                               seed=self.seed, **self.model_opts)

    @cached_property
    def pending_surrogates(self) -> list[PendingClassifier]:
        """The dataset's other models, built (their weight keys known) but not loaded/trained."""
        names = [m for m in self.info.models if m != self.model_name]
        return [PendingClassifier(m, self.dataset, cache=self.cache, device=self.device,
                                  seed=self.seed, **recipe_options(self.model_opts))
                for m in names]

    @property
    def surrogates(self) -> list[LoadedModel]:
        """The dataset's other models with their weights (trained and cached if needed)."""
        return [p.load() for p in self.pending_surrogates]

    @property
    def classifier(self) -> nn.Module:
        return self.target.model

    def fit_context(self) -> FitContext:
        """What a defense's ``fit`` gets. The surrogates are made at first use: only the defenses
        that use them (HGD's training set) make the harness train them; their keys are part of
        ``key`` either way, so a defense's cache key does not depend on whether they exist yet."""
        key = {"dataset": self.info.name, "classifier": self.target.key,
               "surrogates": [p.key for p in self.pending_surrogates]}
        surrogates = LazyModels(lambda: [s.model for s in self.surrogates])
        return FitContext(self.dataset, self.classifier, surrogates, self.device, self.cache,
                          self.seed, key, self.fit_images)

    # -- defenses -----------------------------------------------------------------------------
    def defense_params(self, name: str) -> dict[str, Any]:
        """Constructor options of defense ``name`` (from ``--defense-opt``), shape included.

        A defense whose constructor takes ``model`` gets the target classifier's name unless an
        option or its variant sets it (so it can build the same architecture).
        """
        entry = DEFENSES.get(name)
        opts = accepted(entry.builder, self.defense_opts, name)
        if "model" not in opts and "model" not in entry.overrides and takes(entry.builder, "model"):
            opts["model"] = self.model_name
        return entry.resolve(**opts, input_shape=self.info.input_shape,
                             num_classes=self.info.num_classes)

    def defense(self, name: str, retrain: bool = False) -> Defense:
        """Defense ``name`` built for this dataset and fitted (trained or loaded from cache)."""
        if name not in self._defenses or retrain:
            torch.manual_seed(self.seed)  # initial weights are part of what the cache key names
            d: Defense = DEFENSES.get(name).build(**self.defense_params(name))
            meta = fit_or_load(d, self.fit_context(), retrain=retrain) if d.needs_training else {}
            self._defenses[name] = d.to(self.device).eval()
            self._fit_meta[name] = meta
        return self._defenses[name]

    def fit_meta(self, name: str) -> dict[str, Any]:
        self.defense(name)
        return self._fit_meta[name]

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image correctness (bool, N) of ``model`` on ``x`` (N x C x H x W in [0,1])."""
        model.eval()
        out = []
        for idx in batches(len(x), self.batch_size):
            logits = check_finite(model(x[idx].to(self.device)), "the evaluated model")
            out.append(logits.argmax(1).cpu() == y[idx])
        return torch.cat(out)

    @torch.no_grad()
    def apply(self, defense: Defense, x: torch.Tensor) -> torch.Tensor:
        """Defense outputs for ``x`` in batches (preprocessors only), on CPU."""
        out = [check_finite(defense(x[idx].to(self.device)), "the defense").cpu()
               for idx in batches(len(x), self.batch_size)]
        return torch.cat(out)

    def build_attack(self, name: str, eps: float, attack_opts: dict[str, Any] | None = None,
                     **common: Any) -> Attack:
        entry = ATTACKS.get(name)
        opts = accepted(entry.builder, dict(attack_opts or {}), name)
        return entry.build(eps=eps, seed=self.seed, **{**common, **opts})

    def adversarial(self, attack: Attack, target: nn.Module, target_key: str) -> torch.Tensor:
        """Adversarial versions of the test slice against ``target`` (memoized; oblivious ones on
        disk too, since they do not depend on any defense)."""
        key = {"dataset": self.info.name, "n": len(self.test[1]), "classifier": self.target.key,
               "target": target_key, "attack": attack.name, "params": attack.describe(),
               "eps": attack.eps, "seed": self.seed}
        h = stable_hash(key)
        if h not in self._adv:
            if target_key == "classifier":
                name = f"{self.info.name}-{self.model_name}-{attack.name}"
                self._adv[h] = self.cache.memo_tensors(
                    "adversarial", name, key, lambda: {"x": self._generate(attack, target)})["x"]
            else:
                self._adv[h] = self._generate(attack, target)
        return self._adv[h]

    def oblivious(self, attack: str, eps: float) -> torch.Tensor:
        """The oblivious adversarial set of ``attack`` at ``eps``: crafted on the undefended
        classifier, shared by every defense."""
        return self.adversarial(self.build_attack(attack, eps), self.classifier, "classifier")

    def _generate(self, attack: Attack, target: nn.Module) -> torch.Tensor:
        x, y = self.test
        out = []
        bar = progress(list(batches(len(x), self.batch_size)),
                       desc=f"{attack.name} eps={attack.eps:.4g}")
        for i, idx in enumerate(bar):
            out.append(attack(target, x[idx].to(self.device), y[idx].to(self.device),
                              seed=self.seed * 100003 + i).cpu())
        return torch.cat(out)
