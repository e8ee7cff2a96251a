"""The runner: crosses datasets x models x defenses x attacks x threats x eps into cells.

Each cell is identified by a hash of its fully resolved configuration; a stored cell is skipped,
so rerunning a finished grid is a no-op and an interrupted one resumes. Cells are grouped so that
each classifier, defense and adversarial set is built once. Every adversarial batch is validated
by the attack base class before anything is recorded.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch

import bench
from bench.cache import Cache, stable_hash
from bench.config import PROJECT_ROOT, RunConfig, parse_eps
from bench.data import get_dataset
from bench.defense import MODEL, PREPROCESSOR, Defense
from bench.errors import ConfigError
from bench.registry import ATTACKS, DEFENSES, MODELS
from bench.runtime import resolve_device
from bench.session import Session, baseline_name
from bench.store import CellResult, Store
from bench.threat import Threat, attacked_model, evaluated_model, uses_bpda

log = logging.getLogger(__name__)
SPLIT = "test"


@dataclass(frozen=True)
class Cell:
    """One point of the grid (before its hash is resolved)."""

    defense: str
    attack: str
    threat: Threat
    eps: float


def versions() -> dict[str, str]:
    """Library versions recorded in every row."""
    out = {"python": platform.python_version(), "bench": bench.__version__}
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
    for name in cfg.models:
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


def threats_for(cfg: RunConfig) -> list[Threat]:
    """``--threat`` when given; otherwise every threat model, so nobody sees only the oblivious
    number of a preprocessor."""
    return [Threat.parse(t) for t in cfg.threats] or list(Threat)


class Runner:
    """Runs a :class:`RunConfig` grid into a :class:`Store`."""

    def __init__(self, cfg: RunConfig, store: Store, cache: Cache | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.cache = cache or Cache()
        self.device = resolve_device(cfg.device)
        self.versions = versions()
        self.git_rev = git_revision()

    def run(self) -> list[str]:
        """Run every cell not yet stored; return the hashes of all cells of the grid."""
        validate_names(self.cfg)
        hashes: list[str] = []
        for ds_name in self.cfg.datasets:
            info = get_dataset(ds_name, root=self.cfg.data_root).info
            models = self.cfg.models or (info.models[0],)
            for model_name in models:
                session = Session(ds_name, model_name, n=self.cfg.n, seed=self.cfg.seed,
                                  device=self.device, cache=self.cache,
                                  data_root=self.cfg.data_root, download=self.cfg.download,
                                  batch_size=self.cfg.batch_size,
                                  defense_opts=self.cfg.defense_opts,
                                  model_opts=self.cfg.model_opts,
                                  fit_images=self.cfg.fit_images)
                hashes += self._run_session(session)
        return hashes

    def defenses(self) -> list[str]:
        """The requested defenses with the undefended baseline first (always compared)."""
        base = baseline_name()
        return [base] + [d for d in dict.fromkeys(self.cfg.defenses) if d != base]

    def _run_session(self, s: Session) -> list[str]:
        eps_list = [parse_eps(e) for e in self.cfg.eps] or [s.info.default_eps]
        hashes = []
        for d_name in self.defenses():
            entry = DEFENSES.get(d_name)
            check = getattr(entry.builder, "unsupported", None)
            why = check(s.info.input_shape) if check else None
            if why:
                log.warning("skipping %s on %s: %s", d_name, s.info.name, why)
                continue
            cells = [Cell(d_name, a, t, e) for a in self.cfg.attacks for e in eps_list
                     for t in threats_for(self.cfg)]
            keyed = {self.cell_hash(s, c): c for c in cells}
            hashes += list(keyed)
            done = self.store.done(keyed)
            todo = {h: c for h, c in keyed.items() if h not in done}
            if len(todo) < len(keyed):
                log.info("%s/%s/%s: %d of %d cells already stored", s.info.name, s.model_name,
                         d_name, len(keyed) - len(todo), len(keyed))
            if todo:
                self._run_defense(s, d_name, todo)
        return hashes

    def cell_config(self, s: Session, c: Cell) -> dict[str, Any]:
        """The fully resolved configuration of a cell (its hash identifies it in the store)."""
        attack = s.build_attack(c.attack, c.eps, self.cfg.attack_opts, alpha=self.cfg.alpha,
                                targeted=self.cfg.targeted)
        n = len(s.test[1])
        return {"dataset": s.info.name, "split": SPLIT, "n": n, "model": s.model_name,
                "model_opts": s.model_opts, "defense": c.defense,
                "defense_params": s.defense_params(c.defense), "attack": c.attack,
                "attack_params": attack.describe(), "threat": c.threat.value, "norm": attack.norm,
                "eps": c.eps, "seed": self.cfg.seed, "fit_images": self.cfg.fit_images}

    def cell_hash(self, s: Session, c: Cell) -> str:
        return stable_hash(self.cell_config(s, c), length=24)

    def _run_defense(self, s: Session, d_name: str, todo: dict[str, Cell]) -> None:
        t0 = time.perf_counter()
        defense = s.defense(d_name)
        x, y = s.test
        pipeline = evaluated_model(s.classifier, defense)
        clean = s.correct(pipeline, x, y)
        setup = time.perf_counter() - t0
        log.info("%s/%s/%s: clean accuracy %.4f", s.info.name, s.model_name, d_name,
                 float(clean.float().mean()))
        for h, c in todo.items():
            t1 = time.perf_counter()
            attack = s.build_attack(c.attack, c.eps, self.cfg.attack_opts, alpha=self.cfg.alpha,
                                    targeted=self.cfg.targeted)
            target, target_key = attacked_model(c.threat, s.classifier, defense)
            if target_key != "classifier":
                target_key += ":" + stable_hash(s.defense_params(d_name))
            x_adv = s.adversarial(attack, target, target_key)
            robust = s.correct(pipeline, x_adv, y)
            self.store.add(self._result(s, c, h, defense, attack, clean, robust, x_adv,
                                        time.perf_counter() - t1 + setup / len(todo)))
            log.info("%s/%s/%s %s %s eps=%.4g: robust accuracy %.4f", s.info.name, s.model_name,
                     d_name, c.attack, c.threat.value, c.eps, float(robust.float().mean()))

    def _result(self, s: Session, c: Cell, h: str, defense: Defense, attack: Any,
                clean: torch.Tensor, robust: torch.Tensor, x_adv: torch.Tensor,
                wall: float) -> CellResult:
        x, _ = s.test
        loss = None
        if defense.kind == PREPROCESSOR and not defense.identity:
            loss = float(defense.denoising_loss(s.apply(defense, x_adv), x).mean())
        meta = {**defense.metadata(), "fit": s.fit_meta(c.defense),
                "classifier": s.target.meta, "gradient_free": attack.gradient_free}
        if defense.kind == MODEL:
            meta["replaces_classifier"] = True
        return CellResult(
            config_hash=h, dataset=s.info.name, split=SPLIT, n=len(x), model=s.model_name,
            defense=c.defense, defense_kind=defense.kind, attack=c.attack, threat=c.threat.value,
            norm=attack.norm, eps=c.eps, seed=self.cfg.seed,
            clean_correct=clean.numpy().astype(np.uint8),
            robust_correct=robust.numpy().astype(np.uint8), wall_time=wall,
            device=str(self.device), git_rev=self.git_rev, attack_params=attack.describe(),
            defense_params=s.defense_params(c.defense), versions=self.versions,
            config=self.cell_config(s, c), metadata=meta, denoise_loss=loss,
            bpda=uses_bpda(c.threat, defense, attack.gradient_free),
        )
