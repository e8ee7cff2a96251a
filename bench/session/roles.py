"""The classifiers of a session by role: the target, the other models of the dataset (HGD's
surrogates), the transfer threat's source model, a trainable defense's guide (the model it is
trained against when it is not the target, HGD's Table 4 setting) and what a defense's weights
are trained against (its fit key and context).

Every model is built with its weight key known before anything is trained.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
from torch import nn

from bench.cache import Cache
from bench.config import RunConfig
from bench.data import BenchDataset
from bench.defense import FitContext, LazyModels, split_spec
from bench.errors import ConfigError
from bench.models import LoadedModel, PendingClassifier, recipe_options
from bench.options import scoped
from bench.registry import DEFENSES


class ModelRoles:
    """Target, surrogates, transfer source and guides of a session (see the module docstring).

    Args:
        dataset: the session's dataset.
        model_name: the target classifier's name.
        cfg: the run's configuration (model and defense options, the transfer source, seed,
            training budget and precision).
        cache: where weights are cached.
        device: where the models run.
    """

    def __init__(self, dataset: BenchDataset, model_name: str, cfg: RunConfig, cache: Cache,
                 device: torch.device) -> None:
        self.dataset = dataset
        self.info = dataset.info
        self.model_name = model_name
        self.model_opts = cfg.model_opts
        self.defense_opts = cfg.defense_opts
        self.source_model = cfg.source_model
        self.seed = cfg.seed
        self.fit_images = cfg.fit_images
        self.train_precision = cfg.train_precision  # named in a defense's fit key when not fp32
        self.cache = cache
        self.device = device

    def _model_opts(self, name: str, target: bool) -> dict[str, Any]:
        """The options of classifier ``name``: ``name.key`` ones, and bare ones (only their
        training recipe for a surrogate)."""
        bare = {k: v for k, v in self.model_opts.items() if "." not in k}
        return {**(bare if target else recipe_options(bare)), **scoped(self.model_opts, name)}

    @cached_property
    def pending_target(self) -> PendingClassifier:
        """The target classifier, built, its weight key known, not yet loaded or trained."""
        return PendingClassifier(self.model_name, self.dataset, cache=self.cache,
                                 device=self.device, seed=self.seed,
                                 **self._model_opts(self.model_name, True))

    @cached_property
    def target(self) -> LoadedModel:
        """The target classifier with its weights (trained and cached on first use)."""
        return self.pending_target.load()

    @cached_property
    def pending_surrogates(self) -> list[PendingClassifier]:
        """The dataset's other models, built (their weight keys known) but not loaded/trained."""
        names = [m for m in self.info.models if m != self.model_name]
        return [PendingClassifier(m, self.dataset, cache=self.cache, device=self.device,
                                  seed=self.seed, **self._model_opts(m, False))
                for m in names]

    @property
    def surrogates(self) -> list[LoadedModel]:
        """The dataset's other models with their weights (trained and cached if needed)."""
        return [p.load() for p in self.pending_surrogates]

    @cached_property
    def source_name(self) -> str:
        """The transfer threat's source model: ``--source-model``, else the dataset's first
        model other than the target."""
        if self.source_model:
            name = self.source_model
        else:
            others = [m for m in self.info.models if m != self.model_name]
            if not others:
                raise ConfigError(f"The transfer threat needs a second model and {self.info.name} "
                                  f"lists only {self.model_name}: pass --source-model NAME.")
            name = others[0]
        if name == self.model_name:
            others = ", ".join(m for m in self.info.models if m != name) or "another model"
            raise ConfigError(f"--source-model {name} is the target model itself: a transfer "
                              f"attack is crafted on another model (e.g. {others}).")
        return name

    @cached_property
    def pending_source(self) -> PendingClassifier:
        """The transfer source, built (its weight key known), not yet loaded or trained."""
        for p in self.pending_surrogates:
            if p.name == self.source_name:
                return p
        return PendingClassifier(self.source_name, self.dataset, cache=self.cache,
                                 device=self.device, seed=self.seed,
                                 **self._model_opts(self.source_name, False))

    @property
    def source(self) -> tuple[nn.Module, str]:
        """The transfer source model with its weights (trained and cached if needed), and its
        weight key."""
        return self.pending_source.load().model, self.pending_source.key

    @property
    def classifier(self) -> nn.Module:
        return self.target.model

    def guide(self, name: str | None) -> str | None:
        """The model trainable defense ``name`` is trained against when it is not the target
        (``--defense-opt NAME.guide=MODEL``, or a composite's part ``NAME@MODEL``: HGD's Table 4
        setting, a denoiser guided by one model defending another); None for the target."""
        if name is None:
            return None
        base, pinned = split_spec(name)
        if not getattr(DEFENSES.get(base).builder, "needs_training", False):
            if pinned is not None:
                raise ConfigError(f"Defense part {name!r}: {base} is not trained, so no model "
                                  f"guides it; write {base}.")
            return None
        value = pinned if pinned is not None else self.defense_opts.get(
            f"{base}.guide", self.defense_opts.get("guide"))
        if value is None or value == self.model_name:
            return None
        if not isinstance(value, str) or value not in self.info.models:
            where = f"defense part {name!r}" if pinned is not None else \
                f"--defense-opt {base}.guide={value!r}"
            raise ConfigError(f"{where}: use a model of {self.info.name} "
                              f"({', '.join(self.info.models)}).")
        return value

    def spec(self, name: str) -> str:
        """Defense ``name`` (``NAME`` or ``NAME@MODEL``) in canonical form: ``NAME`` when that
        is trained against the same model, so a part equal to a grid's defense is that defense
        (same weights, same identity)."""
        base, pinned = split_spec(name)
        return base if pinned is None or self.guide(name) == self.guide(base) else name

    @property
    def model_names(self) -> list[str]:
        """The dataset's models, the target first."""
        return [self.model_name, *[m for m in self.info.models if m != self.model_name]]

    def pending_named(self, name: str) -> PendingClassifier:
        """Model ``name`` of the dataset (the target or a surrogate), its weight key known."""
        for p in [self.pending_target, *self.pending_surrogates]:
            if p.name == name:
                return p
        raise ConfigError(f"Model {name!r} is not a model of {self.info.name}: use one of "
                          f"{', '.join(self.info.models)}.")

    def model_named(self, name: str) -> nn.Module:
        """Classifier ``name`` of the dataset with its weights (trained and cached if needed)."""
        return self.classifier if name == self.model_name else \
            self.pending_named(name).load().model

    def _fit_models(self, name: str | None) -> tuple[PendingClassifier, list[PendingClassifier]]:
        """The classifier defense ``name`` is trained against, and the other models (HGD's
        surrogates): the target and the dataset's others, or, with a guide, the guide and every
        other model (the target included)."""
        guide = self.guide(name)
        if guide is None:
            return self.pending_target, self.pending_surrogates
        everyone = [self.pending_target, *self.pending_surrogates]
        return (next(p for p in everyone if p.name == guide),
                [p for p in everyone if p.name != guide])

    def fit_key(self, name: str | None = None) -> dict[str, Any]:
        """What defense ``name``'s weights are trained against: dataset, classifier and
        surrogates (their weight keys; nothing is trained to know them)."""
        main, others = self._fit_models(name)
        return {"dataset": self.info.name, "classifier": main.key,
                "surrogates": [p.key for p in others],
                **({"precision": self.train_precision} if self.train_precision != "fp32"
                   else {})}

    def fit_context(self, name: str | None = None) -> FitContext:
        """What defense ``name``'s ``fit`` gets. The surrogates are made at first use: only the
        defenses that use them (HGD's training set) make the harness train them; their keys are
        part of ``key`` either way, so a defense's cache key does not depend on whether they
        exist yet."""
        main, others = self._fit_models(name)
        surrogates = LazyModels(lambda: [p.load().model for p in others])
        return FitContext(self.dataset, main.load().model, surrogates, self.device, self.cache,
                          self.seed, self.fit_key(name), self.fit_images,
                          self.train_precision)
