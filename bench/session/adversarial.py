"""Adversarial sets of a session's slice: each identified by everything it depends on
(:meth:`AdversarialSets.key`), crafted batch by batch under the per-batch seed, validated against
the clean slice whenever it is used, memoized, and kept in the cache (in memory or on disk) when
no defense is part of its target, so that one computation serves every defense.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.accel import precision_scope, to_device, to_memory_format
from bench.attack import Attack, validate_adversarial
from bench.cache import Cache, stable_hash
from bench.config import RunConfig
from bench.defense import Defense
from bench.errors import BenchError, CheckpointError
from bench.runtime import batches, progress
from bench.seeds import batch_seed
from bench.session.defenses import SessionDefenses
from bench.session.roles import ModelRoles
from bench.session.slice import TestSlice
from bench.stream import DiskTensor, DiskWriter, Images, on_disk, validate_stream
from bench.threat import Target, Threat, eot_draws

log = logging.getLogger(__name__)


class AdversarialSets:
    """The adversarial sets of one (dataset, classifier) session.

    Args:
        data: the evaluated slice.
        roles, defenses: the session's models and defenses (what a target is made of).
        cfg: the run's configuration (seed, EOT draws, the attacks' precision and format).
        cache: where sets no defense is part of are kept across runs.
        device: where attacks run.
        batch_size: the session's batch size, asked per call.
    """

    def __init__(self, data: TestSlice, roles: ModelRoles, defenses: SessionDefenses,
                 cfg: RunConfig, cache: Cache, device: torch.device,
                 batch_size: Callable[[], int]) -> None:
        self.data, self.roles, self.defenses = data, roles, defenses
        self.seed, self.eot = cfg.seed, cfg.eot
        self.attack_precision, self.channels_last = cfg.attack_precision, cfg.channels_last
        self.cache, self.device = cache, device
        self._batch_size = batch_size
        self._memo: dict[str, Images] = {}

    def target(self, threat: Threat, defense: str, attack: Attack) -> Target:
        """What ``attack`` under ``threat`` differentiates in the cells of ``defense``: the
        classifier, the transfer source (by weight key), or the defended pipeline with its EOT
        draws and its identity (so a set crafted through a defense is never read for another)."""
        d = self.defenses.built(defense)
        eot = eot_draws(threat, d, self.eot, attack.gradient_free)
        source = self.roles.pending_source.key if threat is Threat.TRANSFER else None
        identity = (stable_hash(self.defenses.identity(defense))
                    if threat is Threat.WHITEBOX and not d.identity else None)
        return Target.of(threat, d, eot, source, identity)

    def key(self, attack: Attack, target: Target) -> dict[str, Any]:
        """Everything an adversarial set depends on: the slice, the classifier, the attacked
        model (``target``), the attack with its resolved parameters (targeting included), eps,
        and what decides its per-batch randomness (the seed and the batch size)."""
        return {"slice": self.data.slice_id, "classifier": self.roles.pending_target.key,
                "target": target.key, "attack": attack.name, "params": attack.describe(),
                "norm": attack.norm, "eps": attack.eps, "seed": self.seed,
                "batch_size": self._batch_size(),
                **({"precision": self.attack_precision} if self.attack_precision != "fp32"
                   else {})}

    def _model(self, target: Target, defense: Defense | None) -> nn.Module:
        source = self.roles.source[0] if target.threat is Threat.TRANSFER else None
        return target.model(self.roles.classifier, defense, source)

    def _cache_name(self, attack: Attack, target: Target) -> str:
        model = (self.roles.source_name if target.threat is Threat.TRANSFER
                 else self.roles.model_name)
        return f"{self.roles.info.name}-{model}-{attack.name}"

    def adversarial(self, attack: Attack, target: Target, defense: Defense | None = None,
                    keep: torch.Tensor | None = None) -> Images:
        """Adversarial versions of the test slice against ``target`` (``defense``: the fitted
        defense of a whitebox target), validated against the clean slice (memoized; a shared
        target's set in the cache too, since it does not depend on any defense; a cached set
        that fails validation is recomputed).

        With ``keep`` (bool, one per image; a set crafted through a deterministic defense
        only), only those images are attacked, each exactly as attacking the whole slice would
        (:meth:`~bench.attack.Attack.perturb_rows`); the others stay clean."""
        key = self.key(attack, target)
        h = stable_hash(key)
        if keep is not None:
            if target.shared:
                raise ValueError("only a set crafted through a defense is attacked in part")
            h += ":" + hashlib.sha256(keep.numpy().tobytes()).hexdigest()[:16]
        if h in self._memo:
            return self._memo[h]
        model = self._model(target, defense)
        if on_disk(self.data.test[0]):
            self._memo[h] = self._on_disk(attack, model, target, key, keep)
            return self._memo[h]
        x, y = self.data.test

        def validate(t: dict[str, torch.Tensor]) -> None:
            validate_adversarial(x, t["x"], attack.eps, f"the adversarial set of {attack.name}")

        def make() -> dict[str, torch.Tensor]:
            return {"x": self.craft(attack, model, x, y, lambda i: batch_seed(self.seed, i),
                                    keep)}

        if target.shared:
            tensors = self.cache.memo_tensors("adversarial", self._cache_name(attack, target),
                                              key, make, validate)
        else:
            tensors = make()
            validate(tensors)
        self._memo[h] = tensors["x"]
        return self._memo[h]

    def _on_disk(self, attack: Attack, model: nn.Module, target: Target, key: dict[str, Any],
                 keep: torch.Tensor | None) -> DiskTensor:
        """:meth:`adversarial` for a slice on disk: the set written batch by batch as it is
        crafted, and validated batch by batch whenever it is used. A shared target's set lives
        in the cache (reused across runs; verified and validated when read back, and
        recomputed when either fails); one crafted through a defense in the scratch folder."""
        x, y = self.data.test
        what = f"the adversarial set of {attack.name}"
        seeds = lambda i: batch_seed(self.seed, i)  # noqa: E731
        if not target.shared:
            out = self.craft(attack, model, x, y, seeds, keep,
                             out=self.data.scratch() / f"adv-{uuid.uuid4().hex}")
            validate_stream(x, out, attack.eps, what, self._batch_size())
            return out  # type: ignore[return-value]
        folder = self.cache.path("adversarial", self._cache_name(attack, target),
                                 key).with_suffix(".d")
        stored_key = json.loads(json.dumps(key, default=str))  # as the metadata holds it
        if (folder / "meta.json").exists():
            try:
                hit = DiskTensor(folder, verify=True)
                if hit.extra.get("key") != stored_key:
                    raise CheckpointError(f"{folder} holds another set's key")
                validate_stream(x, hit, attack.eps, what, self._batch_size())
                return hit
            except BenchError as exc:
                log.warning("recomputing %s, rejected on reading: %s", folder, exc)
        out = self.craft(attack, model, x, y, seeds, None, out=folder, extra={"key": stored_key})
        validate_stream(x, out, attack.eps, what, self._batch_size())
        return out  # type: ignore[return-value]

    def shared(self, attack: Attack, threat: Threat) -> Images:
        """The adversarial set of ``attack`` that no defense is part of: crafted on the
        classifier (``oblivious``) or on the transfer source (``transfer``); the same set, under
        the same key, as the cells read."""
        if threat is Threat.TRANSFER:
            return self.adversarial(attack, Target(Threat.TRANSFER,
                                                   source=self.roles.pending_source.key))
        if threat is not Threat.OBLIVIOUS:
            raise ValueError(f"no defense-free adversarial set under {threat.value}")
        return self.adversarial(attack, Target(Threat.OBLIVIOUS))

    def craft(self, attack: Attack, target: nn.Module, x: Images, y: torch.Tensor,
              seed_of: Callable[[int], int], keep: torch.Tensor | None = None,
              out: Path | None = None, extra: dict[str, Any] | None = None) -> Images:
        """``attack`` on images ``x`` (N x C x H x W in [0,1], CPU; in memory or on disk) with
        labels ``y``, batch by batch, batch ``i`` seeded ``seed_of(i)``; each batch validated
        (CPU result). With ``keep`` (bool, N), only those images are attacked, each as in the
        whole batch. Images on disk give a set written to disk batch by batch (into ``out``,
        else the session's scratch folder, with ``extra`` in its metadata)."""
        writer = DiskWriter(out or self.data.scratch() / f"adv-{uuid.uuid4().hex}") \
            if on_disk(x) else None
        to_memory_format(target, self.channels_last)
        parts = []
        bar = progress(list(batches(len(x), self._batch_size())),
                       desc=f"{attack.name} eps={attack.eps:.4g}")
        try:
            for i, idx in enumerate(bar):
                xb = x[idx]
                rows = None if keep is None or bool(keep[idx].all()) else \
                    keep[idx].nonzero().flatten().to(self.device)
                if rows is not None and not len(rows):
                    adv = xb.clone()  # nothing left to attack in this batch
                else:
                    with precision_scope(self.device, self.attack_precision):
                        adv = attack(target, to_device(xb, self.device, self.channels_last),
                                     to_device(y[idx], self.device), seed=seed_of(i),
                                     rows=rows)
                    adv = adv.float().contiguous().cpu()
                if writer is None:
                    parts.append(adv)
                else:
                    writer.write(adv)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            return writer.finish(extra)
        if parts:
            return torch.cat(parts)
        return x.clone() if isinstance(x, torch.Tensor) else x[torch.arange(0)]
