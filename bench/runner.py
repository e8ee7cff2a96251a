"""The runner: crosses datasets x models x defenses x attacks x threats x eps into cells.

Each cell is identified by a hash of its fully resolved configuration; a stored cell is skipped,
so rerunning a finished grid is a no-op and an interrupted one resumes. Every session is checked
(names, options, data files) before anything is trained; each cell is planned once
(:meth:`Runner.plan`: its attack, configuration and hash). Cells are grouped so that each
classifier, defense and adversarial set is built once. Every adversarial batch, and every whole
set when it is used, is validated before anything is recorded.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch

import bench
from bench.accel import AUTO, NondeterminismLog
from bench.attack import Attack
from bench.cache import Cache, stable_hash
from bench.config import PROJECT_ROOT, RunConfig
from bench.data import get_dataset
from bench.defense import MODEL, PREPROCESSOR, Defense
from bench.errors import ConfigError
from bench.registry import ATTACKS, DEFENSES, MODELS
from bench.runtime import resolve_device
from bench.session import SPLIT, Session, baseline_name, derive_seed
from bench.store import CellResult, Store
from bench.suite import AttackSuite, evaluate_suite
from bench.threat import DEFAULT_THREATS, Threat, attacked_model, eot_draws, uses_bpda

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Library versions recorded in every row."""
    # CPU float reductions depend on the thread count, so weights trained with another count
    # differ in their last bits (and a cell evaluated with them in its numbers): recorded.
    out = {"python": platform.python_version(), "bench": bench.__version__,
           "torch_threads": str(torch.get_num_threads())}
    for pkg in ("torch", "torchvision", "torchattacks", "timm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def git_revision() -> str:
    """HEAD of the project checkout, with ``-dirty`` when it has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def validate_names(cfg: RunConfig) -> None:
    """Fail fast, before any training, on an unknown plugin name or threat."""
    for name in cfg.datasets:
        get_dataset(name, root=cfg.data_root)  # constructs only; files are read later
    for name in (*cfg.models, *([cfg.source_model] if cfg.source_model else [])):
        MODELS.get(name)
    for name in cfg.defenses:
        DEFENSES.get(name)
    for name in cfg.attacks:
        ATTACKS.get(name)
    for t in cfg.threats:
        Threat.parse(t)
    if not cfg.attacks:
        raise ConfigError("No attack given: pass --attack NAME[,NAME...]. See: python -m bench "
                          "list attacks")


def threats_for(cfg: RunConfig, attack: Attack | None = None) -> list[Threat]:
    """``--threat`` when given; otherwise the default threat models (oblivious and whitebox),
    so nobody sees only the oblivious number of a preprocessor. An attack suite runs once, as
    whitebox: its members choose their own threat models."""
    threats = [Threat.parse(t) for t in cfg.threats] or list(DEFAULT_THREATS)
    if isinstance(attack, AttackSuite):
        if Threat.WHITEBOX not in threats:
            raise ConfigError(f"{attack.name} is an attack suite that chooses its members' "
                              f"threat models and is stored as whitebox: add whitebox to "
                              f"--threat or drop --threat.")
        return [Threat.WHITEBOX]
    return threats


@dataclass(frozen=True)
class Cell:
    """One point of the grid, planned once: its attack (built once per (attack, eps) and
    session), its fully resolved configuration and the hash that identifies it in the store."""

    defense: str
    attack: Attack
    threat: Threat
    eps: float
    config: dict[str, Any]
    hash: str

    @property
    def seed(self) -> int:
        """The cell's own seed (of its evaluation randomness), derived from its hash: the same
        whatever else runs in the grid, in whatever order, resumed or not."""
        return derive_seed("cell", self.hash)


@dataclass(frozen=True)
class Group:
    """The unit of work of an executor: the cells not yet stored of one defense in one
    (dataset, model) session."""

    session: Session
    defense: str
    cells: list[Cell]


class Runner:
    """Runs a :class:`RunConfig` grid into a :class:`Store`."""

    def __init__(self, cfg: RunConfig, store: Store, cache: Cache | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.cache = cache or Cache()
        self.device = resolve_device(cfg.device)
        self.versions = versions()
        self.git_rev = git_revision()

    def sessions(self) -> list[Session]:
        """One session per (dataset, model) of the grid, every one of them checked (names,
        options, data files) before anything is trained."""
        validate_names(self.cfg)
        out = []
        for ds_name in self.cfg.datasets:
            info = get_dataset(ds_name, root=self.cfg.data_root).info
            for model_name in self.cfg.models or (info.models[0],):
                out.append(Session.for_config(self.cfg, ds_name, model_name, cache=self.cache))
        transfer = Threat.TRANSFER in threats_for(self.cfg)
        for s in out:
            s.validate(self.defenses(), self.cfg.attacks, self.cfg.eps, source=transfer)
        if self.cfg.batch_size == AUTO:  # before any cell is planned: the size is in its hash
            from bench.executor import executor_for

            executor = executor_for(self.cfg)
            for s in out:
                if s.batch_auto is None:
                    s.batch_auto = executor.batch_size(self, s, self.defenses())
        return out

    def run(self) -> list[str]:
        """Run every cell not yet stored, through the configured executor (``cfg.executor``);
        return the hashes of all cells of the grid. Only this process writes the store."""
        from bench.executor import executor_for

        hashes, groups = self.groups(self.sessions())
        for result in executor_for(self.cfg).run(self, groups):
            self.store.add(result)
        return hashes

    def groups(self, sessions: list[Session]) -> tuple[list[str], list[Group]]:
        """The hashes of every cell of the grid, and its cells not yet stored grouped by
        (dataset, model, defense): the unit of work an executor runs (the defense is fitted
        once and its clean accuracy measured once per group)."""
        hashes: list[str] = []
        groups: list[Group] = []
        for s in sessions:
            for d_name in self.defenses():
                why = s.unsupported(d_name)
                if why:
                    log.warning("skipping %s on %s: %s", d_name, s.info.name, why)
                    continue
                cells = self.plan(s, d_name)
                hashes += [c.hash for c in cells]
                done = self.store.done(c.hash for c in cells)
                todo = [c for c in cells if c.hash not in done]
                if len(todo) < len(cells):
                    log.info("%s/%s/%s: %d of %d cells already stored", s.info.name,
                             s.model_name, d_name, len(cells) - len(todo), len(cells))
                if todo:
                    groups.append(Group(s, d_name, todo))
        return hashes, groups

    def defenses(self) -> list[str]:
        """The requested defenses with the undefended baseline first (always compared)."""
        base = baseline_name()
        return [base] + [d for d in dict.fromkeys(self.cfg.defenses) if d != base]

    def plan(self, s: Session, defense: str) -> list[Cell]:
        """The cells of ``defense`` in session ``s``: attacks x eps x threats."""
        eps_list = list(self.cfg.eps) or [s.info.default_eps]
        cells = []
        for a in self.cfg.attacks:
            for e in eps_list:
                attack = s.attack(a, e)
                for t in threats_for(self.cfg, attack):
                    config = self.cell_config(s, defense, attack, t)
                    cells.append(Cell(defense, attack, t, e, config,
                                      stable_hash(config, length=24)))
        return cells

    def cell_config(self, s: Session, defense: str, attack: Attack,
                    threat: Threat) -> dict[str, Any]:
        """The fully resolved configuration of a cell: everything that can change its numbers
        (its hash identifies it in the store)."""
        ident = s.defense_id(defense)
        return {"dataset": s.info.name, "split": SPLIT, "n": len(s.test[1]),
                "slice": s.slice_id, "model": s.model_name,
                "model_opts": s.pending_target.spec["opts"], "classifier": s.pending_target.key,
                "defense": defense, "defense_params": ident["params"],
                "defense_weights": ident["weights"], "fit_images": ident["fit_images"],
                "attack": attack.name, "attack_params": attack.describe(),
                "threat": threat.value, "norm": attack.norm, "eps": attack.eps,
                "seed": self.cfg.seed, "batch_size": s.batch_size,
                **{k: ident[k] for k in ("guide", "parts") if k in ident},
                **self.extras(s, defense, attack, threat)}

    def extras(self, s: Session, defense: str, attack: Attack, threat: Threat) -> dict[str, Any]:
        """The settings of a cell that exist only for some cells (absent otherwise, so adding
        them left every other cell's hash unchanged): EOT draws, evaluation draws of a
        randomized defense, the transfer source, a suite's members on this defense."""
        d = s.built(defense)
        out: dict[str, Any] = {}
        suite = isinstance(attack, AttackSuite)
        members = attack.plan(d) if suite else []
        budget = getattr(attack, "eot", None) or s.eot
        eot = max([eot_draws(threat, d, s.eot, attack.gradient_free)]
                  + [eot_draws(Threat(m.threat), d, budget, attack.member(m).gradient_free)
                     for m in members])
        if eot > 1:
            out["eot"] = eot
        if s.draws(d) > 1:
            out["eval_draws"] = s.draws(d)
        if threat is Threat.TRANSFER or any(m.threat == Threat.TRANSFER for m in members):
            out["source"] = {"model": s.source_name, "key": s.pending_source.key}
        if suite:
            out["suite"] = [m.describe(attack.member(m)) for m in members]
        if s.attack_precision != "fp32":
            out["attack_precision"] = s.attack_precision
        return out

    def evaluate(self, s: Session, d_name: str, todo: list[Cell]) -> Iterator[CellResult]:
        """The results of cells ``todo`` of defense ``d_name`` in session ``s``, one by one as
        each is computed (the caller stores them)."""
        t0 = time.perf_counter()
        setup_log = NondeterminismLog(active=s.device.type == "cuda" and
                                      bool(s.determinism["deterministic"]))
        with setup_log.watch():
            defense = s.defense(d_name)
            ident = stable_hash({"defense": s.defense_id(d_name), "slice": s.slice_id,
                                 "classifier": s.pending_target.key, "seed": self.cfg.seed,
                                 "batch_size": s.batch_size})
            clean, _ = s.evaluate(defense, s.test[0], derive_seed("clean", ident))
        setup = time.perf_counter() - t0
        log.info("%s/%s/%s: clean accuracy %.4f", s.info.name, s.model_name, d_name,
                 float(clean.float().mean()))
        for c in todo:
            t1 = time.perf_counter()
            extra: dict[str, Any] = {}
            ops = NondeterminismLog(list(setup_log.ops), setup_log.active)
            with ops.watch():
                if isinstance(c.attack, AttackSuite):
                    out = evaluate_suite(s, c.attack, defense, clean, c.seed,
                                         c.attack.eot or s.eot)
                    robust, loss = out.robust, None
                    extra["suite"] = {"members": out.members, "first_break": out.first_break}
                else:
                    robust, loss, attacked = self._attack_cell(s, c, defense, clean)
                    extra["attacked"] = attacked
            extra["execution"] = {**s.execution(),
                                  **({"nondeterministic_ops": ops.ops} if ops.ops else {})}
            result = self._result(s, c, defense, clean, robust, loss,
                                  time.perf_counter() - t1 + setup / len(todo), extra)
            log.info("%s/%s/%s %s %s eps=%.4g: robust accuracy %.4f", s.info.name, s.model_name,
                     d_name, c.attack.name, c.threat.value, c.eps, float(robust.float().mean()))
            yield result

    def _attack_cell(self, s: Session, c: Cell, defense: Defense, clean: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """One attack's cell: its adversarial set against the cell's attacked model (shared
        between defenses when the threat ignores the defense), judged by the defended
        pipeline; the per-image robust flags, the denoising losses and how many images were
        attacked.

        An image counts as robust only when it is correct both clean and under attack
        (AutoAttack's convention), so an image the defended model already misclassifies clean
        is not attacked when the set is crafted through a deterministic defense: each other
        image's adversarial example is exactly the one attacking everything gives it
        (:meth:`~bench.attack.Attack.perturb_rows`), and every flag is the same. Sets that no
        defense is part of (oblivious, transfer) serve every defense and cover every image;
        through a randomized defense, what one image draws depends on its batch, so every
        image is attacked. The denoising loss is averaged over the attacked images."""
        source = s.source if c.threat is Threat.TRANSFER else None
        eot = eot_draws(c.threat, defense, s.eot, c.attack.gradient_free)
        target, target_key = attacked_model(c.threat, s.classifier, defense, source, eot)
        keep = None
        if target_key.startswith("defense:"):
            target_key += ":" + stable_hash(s.defense_id(c.defense))
            keep = None if defense.randomized else clean
        x_adv = s.adversarial(c.attack, target, target_key, keep=keep)
        loss_wanted = defense.kind == PREPROCESSOR and not defense.identity
        robust, loss = s.evaluate(defense, x_adv, c.seed, denoising_loss=loss_wanted)
        if keep is not None and loss is not None:
            loss = loss[keep]
        attacked = int(keep.sum()) if keep is not None else len(clean)
        return robust & clean, loss, attacked

    def _result(self, s: Session, c: Cell, defense: Defense, clean: torch.Tensor,
                robust: torch.Tensor, loss: torch.Tensor | None, wall: float,
                extra: dict[str, Any]) -> CellResult:
        meta = {**defense.metadata(), "fit": s.fit_meta(c.defense),
                "classifier": s.target.meta, "gradient_free": c.attack.gradient_free,
                "audit_role": c.attack.audit_role,
                "evaluation_seed": c.seed, **extra,
                **{k: c.config[k] for k in ("eot", "eval_draws", "source") if k in c.config}}
        if defense.kind == MODEL:
            meta["replaces_classifier"] = True
        return CellResult(
            config_hash=c.hash, dataset=s.info.name, split=SPLIT, n=len(robust),
            model=s.model_name, defense=c.defense, defense_kind=defense.kind,
            attack=c.attack.name, threat=c.threat.value, norm=c.attack.norm, eps=c.eps,
            seed=self.cfg.seed, clean_correct=clean.numpy().astype(np.uint8),
            robust_correct=robust.numpy().astype(np.uint8), wall_time=wall,
            device=str(self.device), git_rev=self.git_rev, attack_params=c.attack.describe(),
            defense_params=c.config["defense_params"], versions=self.versions,
            config=c.config, metadata=meta,
            denoise_loss=float(loss.mean()) if loss is not None and len(loss) else None,
            bpda=uses_bpda(c.threat, defense, c.attack.gradient_free),
        )
