"""The defenses of a session: built from the registry with the run's options, identified before
anything is trained (resolved parameters, weight key, guide, a composite's parts), fitted or
loaded once, and checked on a few clean images.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.cache import stable_hash
from bench.config import RunConfig
from bench.defense import (
    PREPROCESSOR,
    Defense,
    Parts,
    check_output,
    fit_or_load,
    split_spec,
    weights_key,
)
from bench.errors import ConfigError, PluginContractError
from bench.options import scoped
from bench.registry import DEFENSES
from bench.runtime import rng_isolated
from bench.session.roles import ModelRoles
from bench.session.slice import TestSlice
from bench.signature import accepted_options

PROBE = 4  # clean test images each defense's output is checked on, once


def baseline_name() -> str:
    """The registered undefended baseline: the first defense declaring ``identity``."""
    for entry in DEFENSES.entries():
        if getattr(entry.builder, "identity", False):
            return entry.name
    raise LookupError("no identity (undefended) defense is registered")


class SessionDefenses:
    """Defenses built, identified and fitted for one (dataset, classifier).

    Args:
        roles: the session's models (what a defense is trained against, a composite's models).
        data: the evaluated slice (a fitted defense's output is checked on its first images).
        cfg: the run's configuration (defense options, seed, training budget).
        device: where the defenses run.
    """

    def __init__(self, roles: ModelRoles, data: TestSlice, cfg: RunConfig,
                 device: torch.device) -> None:
        self.roles = roles
        self.data = data
        self.info = roles.info
        self.defense_opts = cfg.defense_opts
        self.seed = cfg.seed
        self.fit_images = cfg.fit_images
        self.device = device
        self._built: dict[str, Defense] = {}
        self._fitted: dict[str, Defense] = {}
        self._fit_meta: dict[str, dict[str, Any]] = {}

    def unsupported(self, name: str) -> str | None:
        """Why defense ``name`` cannot run on this dataset's inputs (None when it can)."""
        check = getattr(DEFENSES.get(split_spec(name)[0]).builder, "unsupported", None)
        return check(self.info.input_shape) if check else None

    def params(self, name: str) -> dict[str, Any]:
        """Constructor options of defense ``name`` (from ``--defense-opt``), shape included.

        A defense whose constructor takes ``model`` gets the target classifier's name unless an
        option or its variant sets it (so it can build the same architecture); one that declares
        ``dataset_recipe`` options gets the dataset's ``fit_recipe`` values for them on the same
        terms (the embedded ``digits``' shorter recipe).
        """
        base = split_spec(name)[0]
        entry = DEFENSES.get(base)
        opts = scoped(self.defense_opts, base, entry.builder)
        if getattr(entry.builder, "needs_training", False):
            opts.pop("guide", None)  # the harness's option (see guide()), not the constructor's
        takes = accepted_options(entry.builder) or ()
        follows = getattr(entry.builder, "dataset_recipe", ())
        if takes and set(follows) - set(takes):
            raise PluginContractError(
                f"Defense '{base}' declares dataset_recipe {sorted(set(follows) - set(takes))} "
                f"that its constructor does not take; fix the plugin (see bench.defense).")
        defaults = {**({"model": self.roles.model_name} if "model" in takes else {}),
                    **{k: v for k, v in self.info.fit_recipe if k in follows}}
        for key, value in defaults.items():
            if key not in opts and key not in entry.overrides:
                opts[key] = value
        return entry.resolve(**opts, input_shape=self.info.input_shape,
                             num_classes=self.info.num_classes)

    def construct(self, name: str) -> Defense:
        """A new defense ``name``, its initial weights drawn from the session's seed."""
        with rng_isolated(self.device):  # initial weights from the session's seed, as keyed
            torch.manual_seed(self.seed)
            return DEFENSES.get(split_spec(name)[0]).build(**self.params(name))

    def built(self, name: str) -> Defense:
        """Defense ``name`` constructed (initial weights drawn from the session's seed, which the
        weight key names); not yet fitted unless :meth:`fitted` fitted it already."""
        if name in self._fitted and name not in self._built:
            return self._fitted[name]
        if name not in self._built:
            self._built[name] = self.construct(name)
        return self._built[name]

    @property
    def fit_budget(self) -> int:
        """Training images of a defense's recipe here (``--fit-images`` or the dataset's)."""
        return int(self.fit_images or self.info.fit_images)

    def identity(self, name: str) -> dict[str, Any]:
        """Defense ``name``'s identity: its resolved parameters and, when it trains, the hash of
        its weight key (what it is trained against, seed, budget); a composite's parts with
        theirs (the models by weight key); known without training."""
        d = self.built(name)
        weights = (stable_hash(weights_key(d, self.roles.fit_key(name), self.seed,
                                           self.fit_budget))
                   if d.needs_training else None)
        parts = self.parts(name)
        guide = self.roles.guide(name)
        return {"params": self.params(name), "weights": weights,
                "fit_images": self.fit_budget if d.needs_training else None,
                **({"guide": guide} if guide else {}),
                **({"parts": {"defenses": {p: self.identity(p) for p in parts.defenses},
                              "models": {m: self.roles.pending_named(m).key
                                         for m in parts.models}}}
                   if parts.defenses or parts.models else {})}

    def fitted(self, name: str, retrain: bool = False) -> Defense:
        """Defense ``name`` built for this dataset, fitted (trained or loaded from cache) and its
        output checked once on a few clean test images."""
        if name not in self._fitted or retrain:
            d = self._built.pop(name, None)
            if d is None or retrain:
                d = self.construct(name)
            meta = (fit_or_load(d, self.roles.fit_context(name), retrain=retrain)
                    if d.needs_training else {})
            parts = self.parts(name)
            if parts.defenses or parts.models:  # a composite: its parts fitted as alone
                d.compose([self.fitted(p) for p in parts.defenses],
                          [self.roles.model_named(m).eval() for m in parts.models])
                meta = {**meta, "parts": {p: self.fit_meta(p) for p in parts.defenses}}
            d = d.to(self.device).eval()
            with rng_isolated(self.device):
                check_output(d, name, self.data.test[0][:PROBE].to(self.device))
            self._fitted[name] = d
            self._fit_meta[name] = meta
        return self._fitted[name]

    def fit_meta(self, name: str) -> dict[str, Any]:
        """The training record of defense ``name`` (fitted first when it is not yet)."""
        self.fitted(name)
        return self._fit_meta[name]

    def parts(self, name: str) -> Parts:
        """Composite defense ``name``'s parts, its defenses in canonical form
        (:meth:`~bench.session.roles.ModelRoles.spec`); empty for any other defense."""
        p = self.built(name).parts(self.roles.model_names)
        for m in p.models:
            if m not in self.info.models:
                raise ConfigError(f"Defense {name}: model {m!r} is not a model of "
                                  f"{self.info.name}; use {', '.join(self.info.models)}.")
        return Parts(tuple(self.roles.spec(d) for d in p.defenses), tuple(p.models))

    def check_parts(self, name: str, parts: Parts) -> bool:
        """Check composite defense ``name``'s parts (one-line ConfigError); whether one of them,
        or one of its models, is trained."""
        trains = False
        for part in parts.defenses:
            why = self.unsupported(part)
            if why:
                raise ConfigError(f"Defense {name}: its part {part} cannot run on "
                                  f"{self.info.name}: {why}.")
            if self.built(part).kind != PREPROCESSOR:
                raise ConfigError(f"Defense {name}: its part {part} is a whole classifier; a "
                                  f"composite's defenses are preprocessors (e.g. lgd, none).")
            trains |= self.built(part).needs_training | self.check_parts(part, self.parts(part))
        return trains or any(not self.roles.pending_named(m).spec["pretrained"]
                             for m in parts.models)

    def models_of(self, name: str) -> list[str]:
        """The dataset's models that defense ``name`` needs besides the target: its guide and a
        composite's models, its parts' included (what an executor trains before the defense)."""
        parts = self.parts(name)
        guide = self.roles.guide(name)
        out = [*([guide] if guide else []), *parts.models]
        for p in parts.defenses:
            out += self.models_of(p)
        return list(dict.fromkeys(out))

    def shared_fits(self, names: list[str]) -> list[str]:
        """The trainable parts of the composite defenses among ``names`` (canonical ``NAME`` or
        ``NAME@MODEL``, each once): what an executor fits once, before the groups that use them,
        which would otherwise each fit them (an ensemble's LGDs, and the grid's own ``lgd``)."""
        out: list[str] = []
        for name in names:
            for part in self.parts(name).defenses:
                if part not in out and self.built(part).needs_training:
                    out.append(part)
        return out
