"""A (dataset, classifier) session: the objects every command needs, built lazily and cached.

It owns the test slice, the target classifier (trained on demand), the surrogate models, fitted
defenses, built attacks and the adversarial sets already computed, so that a grid, a plot or a
training command never repeats work: oblivious adversarial examples are computed once per
(attack, classifier, slice) and reused by every defense, on disk across runs too.

Everything that can change a number has an identity here, known before anything is trained:
the slice (its content digest), the classifier (its weight key), a defense (its resolved
parameters and weight key), an adversarial set (:meth:`Session.adversarial_key`). Every
adversarial set is validated against the clean slice whenever it is used, computed or read back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import uuid
import weakref
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.accel import (
    AUTO,
    attack_step,
    candidates,
    configure_determinism,
    device_name,
    precision_scope,
    probe_batch_size,
    to_device,
    to_memory_format,
)
from bench.attack import Attack, validate_adversarial
from bench.cache import Cache, stable_hash
from bench.config import check_precision, stream_bytes
from bench.data import SPLITS, BenchDataset, get_dataset
from bench.defense import (
    MODEL,
    Defense,
    check_output,
    fit_or_load,
    split_spec,
    weights_key,
)
from bench.errors import BenchError, CheckpointError
from bench.models.roles import ModelRoles
from bench.options import check_scopes, scoped
from bench.registry import ATTACKS, DEFENSES, accepted_options
from bench.runtime import batches, check_finite, progress, rng_isolated
from bench.stream import DiskTensor, DiskWriter, Images, on_disk, validate_stream
from bench.suite import AttackSuite
from bench.threat import Threat, attacked_model, eot_draws

log = logging.getLogger(__name__)
SPLIT = "test"
PROBE = 4  # clean test images each defense's output is checked on, once


def baseline_name() -> str:
    """The registered undefended baseline: the first defense declaring ``identity``."""
    for entry in DEFENSES.entries():
        if getattr(entry.builder, "identity", False):
            return entry.name
    raise LookupError("no identity (undefended) defense is registered")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (e.g. a cell's hash and a batch index): the same parts give
    the same seed on every machine, run and grid order."""
    return int(stable_hash([str(p) for p in parts], length=15), 16)


class Session(ModelRoles):
    """Lazily built state for one dataset and target model.

    Args:
        dataset: dataset name or object.
        model: target classifier name (default: the dataset's first model).
        n: evaluate the first ``n`` test images (all when None).
        defense_opts, attack_opts, model_opts: ``key`` or ``NAME.key`` options (see
            :mod:`bench.options`).
        alpha, targeted: the attacks' step size and target mode (None: their defaults).
    """

    def __init__(self, dataset: str | BenchDataset, model: str | None = None, *,
                 n: int | None = None, seed: int = 0, device: torch.device | None = None,
                 cache: Cache | None = None, data_root: str | None = None, download: bool = False,
                 batch_size: int | str = 250, defense_opts: dict[str, Any] | None = None,
                 model_opts: dict[str, Any] | None = None, fit_images: int | None = None,
                 attack_opts: dict[str, Any] | None = None, alpha: float | None = None,
                 targeted: str | None = None, source_model: str | None = None, eot: int = 20,
                 eval_draws: int = 10, train_precision: str = "fp32",
                 attack_precision: str = "fp32", channels_last: bool = False,
                 deterministic: bool = True, batch_auto: dict[str, Any] | None = None) -> None:
        self.dataset = (dataset if isinstance(dataset, BenchDataset)
                        else get_dataset(dataset, root=data_root, download=download))
        self.info = self.dataset.info
        self.model_name = model or self.info.models[0]
        self.n = n
        self.seed = seed
        self.device = device or torch.device("cpu")
        self.cache = cache or Cache()
        self.batch_request = batch_size  # an int, or "auto" (resolve_batch_size)
        self.batch_auto = batch_auto  # the auto batch size's record, once resolved
        self.train_precision = check_precision(train_precision, "--train-precision")
        self.attack_precision = check_precision(attack_precision, "--attack-precision")
        self.channels_last = bool(channels_last)
        self.determinism = configure_determinism(self.device, deterministic)
        self.defense_opts = dict(defense_opts or {})
        self.model_opts = dict(model_opts or {})
        self.attack_opts = dict(attack_opts or {})
        self.alpha, self.targeted = alpha, targeted
        self.fit_images = fit_images
        self.source_model, self.eot, self.eval_draws = source_model, int(eot), int(eval_draws)
        self._built: dict[str, Defense] = {}
        self._defenses: dict[str, Defense] = {}
        self._fit_meta: dict[str, dict[str, Any]] = {}
        self._attacks: dict[tuple[str, float], Attack] = {}
        self._adv: dict[str, Images] = {}
        self._scratch_dir: Path | None = None

    @classmethod
    def for_config(cls, cfg: Any, dataset: str, model: str | None = None,
                   cache: Cache | None = None, batch_auto: dict[str, Any] | None = None
                   ) -> Session:
        """The session of ``cfg`` (a :class:`~bench.config.RunConfig`) for one dataset and model
        (``batch_auto``: its ``--batch-size auto`` already resolved elsewhere, e.g. by the Ray
        driver)."""
        from bench.runtime import resolve_device

        return cls(dataset, model, n=cfg.n, seed=cfg.seed, device=resolve_device(cfg.device),
                   cache=cache, data_root=cfg.data_root, download=cfg.download,
                   batch_size=cfg.batch_size, defense_opts=cfg.defense_opts,
                   model_opts=cfg.model_opts, fit_images=cfg.fit_images,
                   attack_opts=cfg.attack_opts, alpha=cfg.alpha, targeted=cfg.targeted,
                   source_model=cfg.source_model, eot=cfg.eot, eval_draws=cfg.eval_draws,
                   train_precision=cfg.train_precision, attack_precision=cfg.attack_precision,
                   channels_last=cfg.channels_last, deterministic=cfg.deterministic,
                   batch_auto=batch_auto)

    # -- checks before anything runs ----------------------------------------------------------
    def validate(self, defenses: tuple[str, ...] | list[str] = (),
                 attacks: tuple[str, ...] | list[str] = (),
                 eps: tuple[float, ...] | list[float] = (), source: bool = False) -> None:
        """Check everything this session will use, before anything is trained: the data files,
        every option (scopes, names, types, values) and every plugin's construction (the members
        of an attack suite too); with ``source``, the transfer source model.

        Raises:
            BenchError: one line saying what is wrong and how to fix it.
        """
        models = self.model_names
        check_scopes(self.model_opts, "model", models, "--model-opt", known=list(models))
        parts = {name: self.parts(name) for name in defenses if not self.unsupported(name)}
        grid = [*defenses, *[split_spec(p)[0] for ps in parts.values() for p in ps.defenses]]
        check_scopes(self.defense_opts, "defense", list(dict.fromkeys(grid)), "--defense-opt")
        check_scopes(self.attack_opts, "attack", list(attacks), "--attack-opt")
        trains = not self.pending_target.spec["pretrained"]  # building checks its options
        self.pending_surrogates  # noqa: B018
        for name in defenses:
            if not self.unsupported(name):
                trains |= self.built(name).needs_training
                self.guide(name)
                trains |= self._check_parts(name, parts[name])
        for name in attacks:
            for e in eps or (self.info.default_eps,):
                attack = self.attack(name, e)
                attack.describe()  # a suite builds (and so checks) its members here
                members = attack.plan() if isinstance(attack, AttackSuite) else []
                source |= any(m.threat == Threat.TRANSFER for m in members)
        if source:
            trains |= not self.pending_source.spec["pretrained"]
        self.dataset.check(SPLITS if trains else (SPLIT,))  # nothing trains: test split only

    # -- data and models ----------------------------------------------------------------------
    @cached_property
    def test(self) -> tuple[Images, torch.Tensor]:
        """The evaluated slice: the first ``n`` test images and labels (CPU). Images in memory
        when they fit in ``$BENCH_STREAM_BYTES`` (2 GiB by default), else an on-disk copy read
        per batch (:mod:`bench.stream`), with every adversarial set of the slice on disk too:
        memory then does not grow with ``n`` (ImageNet val is 54 GB per float32 copy)."""
        count = self.dataset.count(SPLIT, self.n)
        if count * math.prod(self.info.input_shape) * 4 <= stream_bytes():
            return self.dataset.tensors(SPLIT, self.n, copies=3)  # clean, adversarial, defended
        return self._slice_on_disk(count)

    def _slice_on_disk(self, count: int) -> tuple[DiskTensor, torch.Tensor]:
        """The slice decoded once, batch by batch, into an on-disk set in the cache (reused
        while the dataset's files are unchanged; verified when opened), with its labels and
        the digest :attr:`slice_id` names, computed as it is written."""
        source = self.dataset.source_key(SPLIT, self.n)
        key = {"dataset": self.info.name, "split": SPLIT, "n": count, "format": 1,
               "shape": list(self.info.input_shape),
               "source": stable_hash(source) if source is not None else None}
        folder = (self.cache.root / "slices" / f"{self.info.name}-{stable_hash(key)}"
                  if source is not None else self._scratch() / "slice")
        if (folder / "meta.json").exists():
            try:
                x = DiskTensor(folder, verify=True)
                if x.extra.get("key") == key:
                    return x, torch.tensor(x.extra["labels"], dtype=torch.long)
            except BenchError as exc:
                log.warning("rewriting the on-disk slice %s: %s", folder, exc)
        log.info("writing %d %s %s images to %s (read back per batch)", count, self.info.name,
                 SPLIT, folder)
        writer, h, labels = DiskWriter(folder), hashlib.sha256(), []
        try:
            for xb, yb in self.dataset.iter_tensors(SPLIT, self.n, self.batch_size):
                xb = xb.to(torch.float32).contiguous()
                writer.write(xb)
                h.update(xb.reshape(-1).view(torch.uint8).numpy())
                labels.append(yb.long())
        except BaseException:
            writer.abort()
            raise
        y = torch.cat(labels)
        h.update(y.contiguous().reshape(-1).view(torch.uint8).numpy())
        x = writer.finish({"key": key, "labels": y.tolist(), "digest": h.hexdigest()})
        return x, y

    def _scratch(self) -> Path:
        """A folder of this session's own on-disk sets (removed with the session)."""
        if self._scratch_dir is None:
            root = self.cache.root / "tmp"
            root.mkdir(parents=True, exist_ok=True)
            self._scratch_dir = Path(tempfile.mkdtemp(dir=root, prefix="session-"))
            weakref.finalize(self, shutil.rmtree, self._scratch_dir, True)
        return self._scratch_dir

    @cached_property
    def slice_id(self) -> str:
        """The evaluated slice's identity: dataset, split, size and a digest of its pixels and
        labels (other files, or another decoder, give another slice); the same digest whether
        the slice is in memory or on disk."""
        x, y = self.test
        if isinstance(x, DiskTensor):
            return f"{self.info.name}/{SPLIT}/{len(y)}/{x.extra['digest'][:16]}"
        h = hashlib.sha256()
        for t in (x, y):
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        return f"{self.info.name}/{SPLIT}/{len(y)}/{h.hexdigest()[:16]}"

    # -- batch size and execution -------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """The batch size of every attack and evaluation here: ``--batch-size N``, or the one
        ``--batch-size auto`` resolved to (:meth:`resolve_batch_size`; over the classifier
        alone when nothing resolved it for a grid's defenses first)."""
        if self.batch_request != AUTO:
            return int(self.batch_request)
        if self.batch_auto is None:
            self.resolve_batch_size(())
        assert self.batch_auto is not None
        return int(self.batch_auto["chosen"])

    def batch_key(self, defenses: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """What ``--batch-size auto`` depends on: the device (by name), torch, the slice's size
        and shape, the classifier and the whitebox pipelines of ``defenses``, the attacks'
        precision and memory format, EOT."""
        return {"device": device_name(self.device), "torch": torch.__version__,
                "dataset": self.info.name, "shape": list(self.info.input_shape),
                "n": self.dataset.count(SPLIT, self.n), "classifier": self.pending_target.key,
                "defenses": {d: self.defense_id(d) for d in defenses if not self.unsupported(d)},
                "precision": self.attack_precision, "channels_last": self.channels_last,
                "eot": self.eot, "format": 1}

    def resolve_batch_size(self, defenses: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """``--batch-size auto`` for a grid of ``defenses``: the batch with the best attack
        throughput that fits for every one of them (:func:`bench.accel.probe_batch_size`),
        probed on this device through each whitebox pipeline (the heaviest path of a cell; the
        defenses as constructed, not trained: the cost of a step does not depend on weight
        values), then kept in the cache under :meth:`batch_key`, so that the next run on the
        same device and grid uses the same size (and computes the same cells). The row records
        the choice and the measurements (``metadata.execution.batch_size``); passing
        ``--batch-size`` with the chosen number reproduces every cell."""
        if self.batch_request != AUTO:
            return {"requested": int(self.batch_request)}
        if self.batch_auto is not None:
            return self.batch_auto
        key = self.batch_key(defenses)

        def probe() -> dict[str, Any]:
            steps = {"classifier": self._probe_step(self.classifier)}
            for name in key["defenses"]:
                model = self._probe_model(name)
                if model is not None:
                    steps[name] = self._probe_step(model)
            found = probe_batch_size(steps, candidates(key["n"], self.device), self.device)
            log.info("--batch-size auto on %s: %d (%.0f images/s per attack step)",
                     key["device"], found["chosen"], found["images_per_s"])
            return {"requested": AUTO, **found, "chosen": min(found["chosen"], key["n"])}

        self.batch_auto = self.cache.memo_json(
            "batch-size", f"{self.info.name}-{self.model_name}", key, probe)
        return self.batch_auto

    def _probe_step(self, model: nn.Module) -> Any:
        to_memory_format(model, self.channels_last)
        return attack_step(model, self.info.input_shape, self.info.num_classes, self.device,
                           self.attack_precision, self.channels_last)

    def _probe_model(self, name: str) -> nn.Module | None:
        """The whitebox attacked model of defense ``name`` for the batch-size probe: the defense
        as constructed (a composite with its parts as constructed), or fitted when it cannot
        run unfitted; None for the baseline (the classifier's own step)."""
        d = self._construct(name)
        if d.identity:
            return None
        parts = self.parts(name)
        try:
            if parts.defenses or parts.models:
                d.compose([self._construct(p).to(self.device).eval() for p in parts.defenses],
                          [self.model_named(m).eval() for m in parts.models])
            d = d.to(self.device).eval()
            with rng_isolated(self.device), torch.no_grad():
                d(self.test[0][:1].to(self.device))
        except (BenchError, RuntimeError, ValueError, TypeError) as exc:
            log.info("--batch-size auto: %s probed fitted (%s)", name, exc)
            d = self.defense(name)
        eot = eot_draws(Threat.WHITEBOX, d, self.eot)
        return attacked_model(Threat.WHITEBOX, self.classifier, d, None, eot)[0]

    def execution(self) -> dict[str, Any]:
        """How this session's numbers are computed on its device (each row's
        ``metadata.execution``): the device by name, memory format, pinned copies, the
        determinism settings, precisions and how the batch size was chosen."""
        auto = self.batch_auto if self.batch_request == AUTO else None
        return {"device": device_name(self.device), "channels_last": self.channels_last,
                "pinned_copies": self.device.type == "cuda", **self.determinism,
                "train_precision": self.train_precision,
                "attack_precision": self.attack_precision, "evaluation_precision": "fp32",
                "batch_size": ({k: auto[k] for k in ("requested", "chosen", "images_per_s",
                                                     "probe") if k in auto}
                               if auto else {"requested": self.batch_size})}

    # -- defenses -----------------------------------------------------------------------------
    def unsupported(self, name: str) -> str | None:
        """Why defense ``name`` cannot run on this dataset's inputs (None when it can)."""
        check = getattr(DEFENSES.get(split_spec(name)[0]).builder, "unsupported", None)
        return check(self.info.input_shape) if check else None

    def defense_params(self, name: str) -> dict[str, Any]:
        """Constructor options of defense ``name`` (from ``--defense-opt``), shape included.

        A defense whose constructor takes ``model`` gets the target classifier's name unless an
        option or its variant sets it (so it can build the same architecture).
        """
        base = split_spec(name)[0]
        entry = DEFENSES.get(base)
        opts = scoped(self.defense_opts, base, entry.builder)
        if getattr(entry.builder, "needs_training", False):
            opts.pop("guide", None)  # the harness's option (see guide()), not the constructor's
        takes = accepted_options(entry.builder)
        if takes and "model" in takes and "model" not in opts and "model" not in entry.overrides:
            opts["model"] = self.model_name
        return entry.resolve(**opts, input_shape=self.info.input_shape,
                             num_classes=self.info.num_classes)

    def _construct(self, name: str) -> Defense:
        with rng_isolated(self.device):  # initial weights from the session's seed, as keyed
            torch.manual_seed(self.seed)
            return DEFENSES.get(split_spec(name)[0]).build(**self.defense_params(name))

    def built(self, name: str) -> Defense:
        """Defense ``name`` constructed (initial weights drawn from the session's seed, which the
        weight key names); not yet fitted unless :meth:`defense` fitted it already."""
        if name in self._defenses and name not in self._built:
            return self._defenses[name]
        if name not in self._built:
            self._built[name] = self._construct(name)
        return self._built[name]

    def defense_id(self, name: str) -> dict[str, Any]:
        """Defense ``name``'s identity: its resolved parameters and, when it trains, the hash of
        its weight key (what it is trained against, seed, budget); a composite's parts with
        theirs (the models by weight key); known without training."""
        d = self.built(name)
        weights = (stable_hash(weights_key(d, self.fit_key(name), self.seed, self.fit_budget))
                   if d.needs_training else None)
        parts = self.parts(name)
        return {"params": self.defense_params(name), "weights": weights,
                "fit_images": self.fit_budget if d.needs_training else None,
                **({"guide": self.guide(name)} if self.guide(name) else {}),
                **({"parts": {"defenses": {p: self.defense_id(p) for p in parts.defenses},
                              "models": {m: self.pending_named(m).key for m in parts.models}}}
                   if parts.defenses or parts.models else {})}

    @property
    def fit_budget(self) -> int:
        """Training images of a defense's recipe here (``--fit-images`` or the dataset's)."""
        return int(self.fit_images or self.info.fit_images)

    def defense(self, name: str, retrain: bool = False) -> Defense:
        """Defense ``name`` built for this dataset, fitted (trained or loaded from cache) and its
        output checked once on a few clean test images."""
        if name not in self._defenses or retrain:
            d = self._built.pop(name, None)
            if d is None or retrain:
                d = self._construct(name)
            meta = (fit_or_load(d, self.fit_context(name), retrain=retrain) if d.needs_training
                    else {})
            parts = self.parts(name)
            if parts.defenses or parts.models:  # a composite: its parts fitted as alone
                d.compose([self.defense(p) for p in parts.defenses],
                          [self.model_named(m).eval() for m in parts.models])
                meta = {**meta, "parts": {p: self.fit_meta(p) for p in parts.defenses}}
            d = d.to(self.device).eval()
            with rng_isolated(self.device):
                check_output(d, name, self.test[0][:PROBE].to(self.device))
            self._defenses[name] = d
            self._fit_meta[name] = meta
        return self._defenses[name]

    def fit_meta(self, name: str) -> dict[str, Any]:
        self.defense(name)
        return self._fit_meta[name]

    # -- attacks ------------------------------------------------------------------------------
    def attack(self, name: str, eps: float) -> Attack:
        """Attack ``name`` at ``eps`` with the session's options, step size and target mode,
        built once."""
        if (name, eps) not in self._attacks:
            entry = ATTACKS.get(name)
            common = {"alpha": self.alpha, "targeted": self.targeted}
            opts = scoped(self.attack_opts, name, entry.builder)
            self._attacks[(name, eps)] = entry.build(eps=eps, seed=self.seed,
                                                     **{**common, **opts})
        return self._attacks[(name, eps)]

    def adversarial_key(self, attack: Attack, target_id: str) -> dict[str, Any]:
        """Everything an adversarial set depends on: the slice, the classifier, the attacked
        model (``target_id``), the attack with its resolved parameters (targeting included),
        eps, and what decides its per-batch randomness (the seed and the batch size)."""
        return {"slice": self.slice_id, "classifier": self.pending_target.key,
                "target": target_id, "attack": attack.name, "params": attack.describe(),
                "norm": attack.norm, "eps": attack.eps, "seed": self.seed,
                "batch_size": self.batch_size,
                **({"precision": self.attack_precision} if self.attack_precision != "fp32"
                   else {})}

    def adversarial(self, attack: Attack, target: nn.Module, target_id: str,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial versions of the test slice against ``target``, validated against the clean
        slice (memoized; oblivious ones, ``target_id == "classifier"``, on disk too, since they
        do not depend on any defense; a cached set that fails validation is recomputed).

        With ``keep`` (bool, one per image; a set crafted through a deterministic defense
        only), only those images are attacked, each exactly as attacking the whole slice would
        (:meth:`~bench.attack.Attack.perturb_rows`); the others stay clean."""
        key = self.adversarial_key(attack, target_id)
        h = stable_hash(key)
        if keep is not None:
            if not target_id.startswith("defense:"):
                raise ValueError("only a set crafted through a defense is attacked in part")
            h += ":" + hashlib.sha256(keep.numpy().tobytes()).hexdigest()[:16]
        if h not in self._adv and on_disk(self.test[0]):
            self._adv[h] = self._adversarial_on_disk(attack, target, target_id, key, keep)
        if h not in self._adv:
            x = self.test[0]

            def validate(t: dict[str, torch.Tensor]) -> None:
                validate_adversarial(x, t["x"], attack.eps,
                                     f"the adversarial set of {attack.name}")

            def make() -> dict[str, torch.Tensor]:
                return {"x": self._generate(attack, target, keep)}

            if not target_id.startswith("defense:"):  # oblivious or transfer: no defense in it
                model = (self.source_name if target_id.startswith("source:")
                         else self.model_name)
                name = f"{self.info.name}-{model}-{attack.name}"
                tensors = self.cache.memo_tensors("adversarial", name, key, make, validate)
            else:
                tensors = make()
                validate(tensors)
            self._adv[h] = tensors["x"]
        return self._adv[h]

    def _adversarial_on_disk(self, attack: Attack, target: nn.Module, target_id: str,
                             key: dict[str, Any], keep: torch.Tensor | None) -> DiskTensor:
        """:meth:`adversarial` for a slice on disk: the set written batch by batch as it is
        crafted, and validated batch by batch whenever it is used. A set no defense is part of
        lives in the cache (reused across runs; verified and validated when read back, and
        recomputed when either fails); one crafted through a defense in the session's scratch
        folder."""
        x = self.test[0]
        what = f"the adversarial set of {attack.name}"
        if target_id.startswith("defense:"):
            out = self._craft_on_disk(attack, target, self._scratch() / f"adv-{uuid.uuid4().hex}",
                                      keep)
            validate_stream(x, out, attack.eps, what, self.batch_size)
            return out
        model = self.source_name if target_id.startswith("source:") else self.model_name
        folder = self.cache.path("adversarial", f"{self.info.name}-{model}-{attack.name}",
                                 key).with_suffix(".d")
        stored_key = json.loads(json.dumps(key, default=str))  # as the metadata holds it
        if (folder / "meta.json").exists():
            try:
                hit = DiskTensor(folder, verify=True)
                if hit.extra.get("key") != stored_key:
                    raise CheckpointError(f"{folder} holds another set's key")
                validate_stream(x, hit, attack.eps, what, self.batch_size)
                return hit
            except BenchError as exc:
                log.warning("recomputing %s, rejected on reading: %s", folder, exc)
        out = self._craft_on_disk(attack, target, folder, None, extra={"key": stored_key})
        validate_stream(x, out, attack.eps, what, self.batch_size)
        return out

    def _craft_on_disk(self, attack: Attack, target: nn.Module, folder: Path,
                       keep: torch.Tensor | None, extra: dict[str, Any] | None = None,
                       ) -> DiskTensor:
        x, y = self.test
        return self.craft(attack, target, x, y, lambda i: self.seed * 100003 + i, keep,
                          out=folder, extra=extra)  # type: ignore[return-value]

    def shared_threat(self, attack: Attack, threat: Threat, defense: str) -> Threat | None:
        """The threat whose adversarial set the cell of ``defense`` under ``threat`` reads when
        that set involves no defense, so that one computation serves every defense: oblivious
        and transfer sets, and the undefended baseline's whitebox set (the oblivious one); None
        for a set crafted through the defense, or a suite (which crafts on its survivors)."""
        if isinstance(attack, AttackSuite):
            return None
        if threat in (Threat.OBLIVIOUS, Threat.TRANSFER):
            return threat
        return Threat.OBLIVIOUS if self.built(defense).identity else None

    def shared_adversarial(self, attack: Attack, threat: Threat) -> torch.Tensor:
        """The adversarial set of ``attack`` that no defense is part of: crafted on the
        classifier (``oblivious``) or on the transfer source (``transfer``); the same set, under
        the same key, as the cells read (see :func:`bench.threat.attacked_model`)."""
        if threat is Threat.TRANSFER:
            model, key = self.source
            return self.adversarial(attack, model, f"source:{key}")
        if threat is not Threat.OBLIVIOUS:
            raise ValueError(f"no defense-free adversarial set under {threat.value}")
        return self.adversarial(attack, self.classifier, "classifier")

    def oblivious(self, attack: str, eps: float) -> torch.Tensor:
        """The oblivious adversarial set of ``attack`` at ``eps``: crafted on the undefended
        classifier, shared by every defense."""
        return self.shared_adversarial(self.attack(attack, eps), Threat.OBLIVIOUS)

    def _generate(self, attack: Attack, target: nn.Module,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
        """The attack on the slice, batch by batch; batch ``i`` is seeded ``seed * 100003 + i``,
        so a set depends on the seed and the batch size, not on what ran before it."""
        x, y = self.test
        return self.craft(attack, target, x, y, lambda i: self.seed * 100003 + i, keep)

    def craft(self, attack: Attack, target: nn.Module, x: Images, y: torch.Tensor,
              seed_of: Any, keep: torch.Tensor | None = None, out: Path | None = None,
              extra: dict[str, Any] | None = None) -> Images:
        """``attack`` on images ``x`` (N x C x H x W in [0,1], CPU; in memory or on disk) with
        labels ``y``, batch by batch, batch ``i`` seeded ``seed_of(i)``; each batch validated
        (CPU result). With ``keep`` (bool, N), only those images are attacked, each as in the
        whole batch. Images on disk give a set written to disk batch by batch (into ``out``,
        else the session's scratch folder, with ``extra`` in its metadata)."""
        writer = DiskWriter(out or self._scratch() / f"adv-{uuid.uuid4().hex}") \
            if on_disk(x) else None
        to_memory_format(target, self.channels_last)
        parts = []
        bar = progress(list(batches(len(x), self.batch_size)),
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

    # -- evaluation ---------------------------------------------------------------------------
    def draws(self, defense: Defense) -> int:
        """Forward passes per image when ``defense`` is evaluated: ``eval_draws`` for a
        randomized defense, else 1."""
        return self.eval_draws if defense.randomized and not defense.identity else 1

    def evaluate(self, defense: Defense, x_in: torch.Tensor, seed: int,
                 denoising_loss: bool = False, index: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The defended pipeline on ``x_in`` (the slice's clean or adversarial images, N x C x H x
        W in [0,1]; with ``index``, the images of the slice at those positions): per-image
        correctness (bool, N) and, when asked and the defense is a preprocessor, its per-image
        denoising loss against the clean images (from the same forward pass).

        A randomized defense is run :meth:`draws` times per image; an image is correct only when
        every draw classifies it correctly (what an attacker who may query again sees); the loss
        is the first draw's. Draw ``r`` of batch ``i`` runs with torch's RNG seeded from ``(seed,
        i, r)``, isolated from the caller's, so a randomized defense gives the same result for
        the same ``seed`` whatever ran before.
        """
        x_clean, y = self.test
        rows = torch.arange(len(y)) if index is None else index
        classifier = self.classifier.eval()  # loaded (or trained) outside no_grad
        defense.eval()
        to_memory_format(classifier, self.channels_last)
        to_memory_format(defense, self.channels_last)
        correct, losses = [], []
        with rng_isolated(self.device), torch.no_grad(), precision_scope(self.device, "fp32"):
            for i, idx in enumerate(batches(len(x_in), self.batch_size)):
                xb, where = to_device(x_in[idx], self.device, self.channels_last), rows[idx]
                ok = torch.ones(len(where), dtype=torch.bool)
                for r in range(self.draws(defense)):
                    torch.manual_seed(derive_seed(seed, i, r) if r else derive_seed(seed, i))
                    if defense.identity:
                        logits = classifier(xb)
                    elif defense.kind == MODEL:
                        logits = defense(xb)
                    else:
                        x_hat = check_finite(defense(xb), "the defense")
                        logits = classifier(x_hat)
                        if denoising_loss and r == 0:
                            losses.append(defense.denoising_loss(
                                x_hat, to_device(x_clean[where], self.device)).float().cpu())
                    check_finite(logits, "the evaluated model")
                    ok &= logits.argmax(1).cpu() == y[where]
                correct.append(ok)
        empty = torch.zeros(0, dtype=torch.bool)
        return (torch.cat(correct) if correct else empty), (torch.cat(losses) if losses else None)

    @torch.no_grad()
    def apply(self, defense: Defense, x: torch.Tensor) -> torch.Tensor:
        """Defense outputs for ``x`` in batches (preprocessors only), on CPU."""
        out = [check_finite(defense(x[idx].to(self.device)), "the defense").cpu()
               for idx in batches(len(x), self.batch_size)]
        return torch.cat(out)
