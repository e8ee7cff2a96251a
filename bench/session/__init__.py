"""A (dataset, classifier) session: the objects every command needs, built lazily and cached.

A :class:`Session` is a thin facade over one object per job, each in the module that names it:

* :mod:`~bench.session.slice`: the evaluated test slice (in memory or on disk) and its digest;
* :mod:`~bench.session.roles`: the classifiers by role (target, surrogates, transfer source,
  guides) and what a defense is trained against;
* :mod:`~bench.session.defenses`: defenses built, identified, fitted and checked;
* :mod:`~bench.session.attacks`: attacks built once per eps;
* :mod:`~bench.session.adversarial`: adversarial sets (their key, memo, cache, disk, crafting)
  and the typed target each one is aimed at;
* :mod:`~bench.session.evaluate`: the defended pipeline's per-image verdict;
* :mod:`~bench.session.batch`: the batch size (``--batch-size auto``'s probe) and the execution
  record;
* :mod:`~bench.session.checks`: the up-front checks of a grid.

Everything that can change a number has an identity here, known before anything is trained:
the slice (its content digest), the classifier (its weight key), a defense (its resolved
parameters and weight key), an adversarial set (its key). Every adversarial set is validated
against the clean slice whenever it is used, computed or read back.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench.accel import configure_determinism
from bench.attack import Attack
from bench.cache import Cache
from bench.config import RunConfig
from bench.data import BenchDataset, get_dataset
from bench.defense import Defense, Parts
from bench.models import LoadedModel, PendingClassifier
from bench.runtime import resolve_device
from bench.session.adversarial import AdversarialSets
from bench.session.attacks import SessionAttacks
from bench.session.batch import BatchSize
from bench.session.checks import validate
from bench.session.defenses import SessionDefenses, baseline_name
from bench.session.evaluate import Evaluator
from bench.session.roles import ModelRoles
from bench.session.slice import SPLIT, TestSlice
from bench.stream import Images
from bench.threat import Target, Threat

__all__ = ["SPLIT", "Session", "baseline_name"]


class Session:
    """Lazily built state for one dataset and target model.

    Args:
        dataset: dataset name or object.
        model: target classifier name (default: the dataset's first model).
        cfg: the run's configuration (:class:`~bench.config.RunConfig`); ``options`` are
            fields of it to override (``n=100``, ``seed=1``, ``defense_opts={...}``...).
        cache: the weight and tensor cache (default: ``$BENCH_CACHE_DIR``).
        device: where everything runs (default: ``cfg.device`` resolved when ``cfg`` is given,
            else the CPU).
        batch_auto: its ``--batch-size auto`` already resolved elsewhere (the Ray driver).
    """

    def __init__(self, dataset: str | BenchDataset, model: str | None = None,
                 cfg: RunConfig | None = None, *, cache: Cache | None = None,
                 device: torch.device | str | None = None,
                 batch_auto: dict[str, Any] | None = None, **options: Any) -> None:
        self.cfg = dataclasses.replace(cfg or RunConfig(), **options)
        self.dataset = (dataset if isinstance(dataset, BenchDataset) else
                        get_dataset(dataset, root=self.cfg.data_root, download=self.cfg.download))
        self.info = self.dataset.info
        self.model_name = model or self.info.models[0]
        self.n, self.seed, self.eot = self.cfg.n, self.cfg.seed, self.cfg.eot
        if device is None:  # a session made by hand runs on the CPU unless told otherwise
            device = self.cfg.device if cfg is not None else "cpu"
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.cache = cache or Cache()
        self.determinism = configure_determinism(self.device, self.cfg.deterministic)
        # The components ask the facade for the batch size (and the classifier) through a weak
        # reference: no cycle, so a session is freed, its scratch sets removed, when its last
        # reference goes.
        me = weakref.ref(self)

        def batch_size() -> int:
            return me().batch_size  # type: ignore[union-attr]

        def classifier() -> nn.Module:
            return me().classifier  # type: ignore[union-attr]

        self.data = TestSlice(self.dataset, self.n, self.cache, batch_size)
        self.models = ModelRoles(self.dataset, self.model_name, self.cfg, self.cache, self.device)
        self.defenses = SessionDefenses(self.models, self.data, self.cfg, self.device)
        self.attacks = SessionAttacks(self.cfg)
        self.batch = BatchSize(self.cfg, self.models, self.defenses, self.data, self.cache,
                               self.device, self.determinism, batch_auto)
        self.sets = AdversarialSets(self.data, self.models, self.defenses, self.cfg,
                                    self.cache, self.device, batch_size)
        self.evaluator = Evaluator(self.data, classifier, batch_size, self.device,
                                   self.cfg.eval_draws, self.cfg.channels_last)

    @classmethod
    def for_config(cls, cfg: RunConfig, dataset: str, model: str | None = None,
                   cache: Cache | None = None, batch_auto: dict[str, Any] | None = None
                   ) -> Session:
        """The session of ``cfg`` for one dataset and model (``batch_auto``: its
        ``--batch-size auto`` already resolved elsewhere, e.g. by the Ray driver)."""
        return cls(dataset, model, cfg, cache=cache, batch_auto=batch_auto)

    def validate(self, defenses: Sequence[str] = (), attacks: Sequence[str] = (),
                 eps: Sequence[float] = (), source: bool = False) -> None:
        """Check every name, option, plugin and data file before anything is trained
        (:func:`bench.session.checks.validate`)."""
        validate(self.models, self.defenses, self.attacks, defenses, attacks, eps, source)

    # -- the slice and the batch size ---------------------------------------------------------
    @property
    def test(self) -> tuple[Images, torch.Tensor]:
        return self.data.test

    @property
    def slice_id(self) -> str:
        return self.data.slice_id

    @property
    def batch_size(self) -> int:
        return self.batch.size

    @property
    def batch_auto(self) -> dict[str, Any] | None:
        return self.batch.auto

    @batch_auto.setter
    def batch_auto(self, record: dict[str, Any] | None) -> None:
        self.batch.auto = record

    def resolve_batch_size(self, defenses: Sequence[str]) -> dict[str, Any]:
        return self.batch.resolve(tuple(defenses))

    def execution(self) -> dict[str, Any]:
        return self.batch.execution()

    # -- models -------------------------------------------------------------------------------
    @property
    def classifier(self) -> nn.Module:
        return self.models.classifier

    @property
    def target(self) -> LoadedModel:
        return self.models.target

    @property
    def pending_target(self) -> PendingClassifier:
        return self.models.pending_target

    @property
    def source(self) -> tuple[nn.Module, str]:
        return self.models.source

    @property
    def source_name(self) -> str:
        return self.models.source_name

    def model_named(self, name: str) -> nn.Module:
        return self.models.model_named(name)

    # -- defenses -----------------------------------------------------------------------------
    def unsupported(self, name: str) -> str | None:
        return self.defenses.unsupported(name)

    def built(self, name: str) -> Defense:
        return self.defenses.built(name)

    def defense(self, name: str, retrain: bool = False) -> Defense:
        return self.defenses.fitted(name, retrain)

    def defense_id(self, name: str) -> dict[str, Any]:
        return self.defenses.identity(name)

    def defense_params(self, name: str) -> dict[str, Any]:
        return self.defenses.params(name)

    def fit_meta(self, name: str) -> dict[str, Any]:
        return self.defenses.fit_meta(name)

    def parts(self, name: str) -> Parts:
        return self.defenses.parts(name)

    # -- attacks and adversarial sets ---------------------------------------------------------
    def attack(self, name: str, eps: float) -> Attack:
        return self.attacks.attack(name, eps)

    def target_of(self, threat: Threat, defense: str, attack: Attack) -> Target:
        return self.sets.target(threat, defense, attack)

    def adversarial(self, attack: Attack, target: Target, defense: Defense | None = None,
                    keep: torch.Tensor | None = None) -> Images:
        return self.sets.adversarial(attack, target, defense, keep)

    def oblivious(self, attack: str, eps: float) -> Images:
        """The oblivious adversarial set of ``attack`` at ``eps``: crafted on the undefended
        classifier, shared by every defense."""
        return self.sets.shared(self.attack(attack, eps), Threat.OBLIVIOUS)

    # -- evaluation ---------------------------------------------------------------------------
    def draws(self, defense: Defense) -> int:
        return self.evaluator.draws(defense)

    def evaluate(self, defense: Defense, x_in: Images, seed: int,
                 denoising_loss: bool = False, index: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.evaluator.evaluate(defense, x_in, seed, denoising_loss, index)

    def apply(self, defense: Defense, x: torch.Tensor) -> torch.Tensor:
        return self.evaluator.apply(defense, x)
