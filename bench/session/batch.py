"""The batch size of a session (``--batch-size N``, or the probe behind ``--batch-size auto``) and
the record of how its numbers are computed on its device (each row's ``metadata.execution``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from bench.accel import (
    AUTO,
    attack_step,
    candidates,
    device_name,
    probe_batch_size,
    to_memory_format,
)
from bench.cache import Cache
from bench.config import RunConfig
from bench.errors import BenchError
from bench.runtime import rng_isolated
from bench.session.defenses import SessionDefenses
from bench.session.roles import ModelRoles
from bench.session.slice import TestSlice
from bench.threat import Threat, attacked_model, eot_draws

log = logging.getLogger(__name__)


class BatchSize:
    """The batch size of every attack and evaluation of a session, and its execution record.

    Args:
        cfg: the run's configuration (``batch_size``: an int or ``auto``; the attacks'
            precision, memory format and EOT draws, which the probe depends on).
        roles, defenses, data: the session's models, defenses and slice (what is probed).
        cache: where a probe's choice is kept.
        device: the device probed.
        determinism: the device's determinism settings, recorded with every row.
        auto: the ``--batch-size auto`` record when resolved elsewhere (the Ray driver).
    """

    def __init__(self, cfg: RunConfig, roles: ModelRoles, defenses: SessionDefenses,
                 data: TestSlice, cache: Cache, device: torch.device,
                 determinism: dict[str, Any], auto: dict[str, Any] | None = None) -> None:
        self.request = cfg.batch_size
        self.auto = auto
        self.attack_precision = cfg.attack_precision
        self.train_precision = cfg.train_precision
        self.channels_last = cfg.channels_last
        self.eot = cfg.eot
        self.roles, self.defenses, self.data = roles, defenses, data
        self.cache, self.device, self.determinism = cache, device, determinism

    @property
    def size(self) -> int:
        """``--batch-size N``, or the size ``--batch-size auto`` resolved to (:meth:`resolve`;
        over the classifier alone when nothing resolved it for a grid's defenses first)."""
        if self.request != AUTO:
            return int(self.request)
        if self.auto is None:
            self.resolve(())
        if self.auto is None:
            raise RuntimeError("--batch-size auto resolved to nothing")
        return int(self.auto["chosen"])

    def key(self, defenses: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """What ``--batch-size auto`` depends on: the device (by name), torch, the slice's size
        and shape, the classifier and the whitebox pipelines of ``defenses``, the attacks'
        precision and memory format, EOT."""
        info = self.roles.info
        return {"device": device_name(self.device), "torch": torch.__version__,
                "dataset": info.name, "shape": list(info.input_shape),
                "n": self.data.count, "classifier": self.roles.pending_target.key,
                "defenses": {d: self.defenses.identity(d) for d in defenses
                             if not self.defenses.unsupported(d)},
                "precision": self.attack_precision, "channels_last": self.channels_last,
                "eot": self.eot, "format": 1}

    def resolve(self, defenses: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """``--batch-size auto`` for a grid of ``defenses``: the batch with the best attack
        throughput that fits for every one of them (:func:`bench.accel.probe_batch_size`),
        probed on this device through each whitebox pipeline (the heaviest path of a cell; the
        defenses as constructed, not trained: the cost of a step does not depend on weight
        values), then kept in the cache under :meth:`key`, so that the next run on the same
        device and grid uses the same size (and computes the same cells). The row records the
        choice and the measurements (``metadata.execution.batch_size``); passing
        ``--batch-size`` with the chosen number reproduces every cell."""
        if self.request != AUTO:
            return {"requested": int(self.request)}
        if self.auto is not None:
            return self.auto
        key = self.key(defenses)

        def probe() -> dict[str, Any]:
            steps = {"classifier": self._step(self.roles.classifier)}
            for name in key["defenses"]:
                model = self._attacked(name)
                if model is not None:
                    steps[name] = self._step(model)
            found = probe_batch_size(steps, candidates(key["n"], self.device), self.device)
            log.info("--batch-size auto on %s: %d (%.0f images/s per attack step)",
                     key["device"], found["chosen"], found["images_per_s"])
            return {"requested": AUTO, **found, "chosen": min(found["chosen"], key["n"])}

        self.auto = self.cache.memo_json(
            "batch-size", f"{self.roles.info.name}-{self.roles.model_name}", key, probe)
        return self.auto

    def _step(self, model: nn.Module) -> Any:
        to_memory_format(model, self.channels_last)
        info = self.roles.info
        return attack_step(model, info.input_shape, info.num_classes, self.device,
                           self.attack_precision, self.channels_last)

    def _attacked(self, name: str) -> nn.Module | None:
        """The whitebox attacked model of defense ``name`` for the probe: the defense as
        constructed (a composite with its parts as constructed), or fitted when it cannot run
        unfitted; None for the baseline (the classifier's own step)."""
        d = self.defenses.construct(name)
        if d.identity:
            return None
        parts = self.defenses.parts(name)
        try:
            if parts.defenses or parts.models:
                d.compose([self.defenses.construct(p).to(self.device).eval()
                           for p in parts.defenses],
                          [self.roles.model_named(m).eval() for m in parts.models])
            d = d.to(self.device).eval()
            with rng_isolated(self.device), torch.no_grad():
                d(self.data.test[0][:1].to(self.device))
        except (BenchError, RuntimeError, ValueError, TypeError) as exc:
            log.info("--batch-size auto: %s probed fitted (%s)", name, exc)
            d = self.defenses.fitted(name)
        eot = eot_draws(Threat.WHITEBOX, d, self.eot)
        return attacked_model(Threat.WHITEBOX, self.roles.classifier, d, None, eot)[0]

    def execution(self) -> dict[str, Any]:
        """How this session's numbers are computed on its device (each row's
        ``metadata.execution``): the device by name, memory format, pinned copies, the
        determinism settings, precisions and how the batch size was chosen."""
        auto = self.auto if self.request == AUTO else None
        return {"device": device_name(self.device), "channels_last": self.channels_last,
                "pinned_copies": self.device.type == "cuda", **self.determinism,
                "train_precision": self.train_precision,
                "attack_precision": self.attack_precision, "evaluation_precision": "fp32",
                "batch_size": ({k: auto[k] for k in ("requested", "chosen", "images_per_s",
                                                     "probe") if k in auto}
                               if auto else {"requested": self.size})}
