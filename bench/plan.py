"""Planning a grid: datasets x models x defenses x attacks x threats x eps become cells.

Each cell is identified by a hash of its fully resolved configuration (:meth:`Planner.
cell_config`): a stored cell is skipped, so rerunning a finished grid is a no-op and an
interrupted one resumes. Every session is checked (names, options, data files) before anything
is trained; each cell is planned once (its attack, configuration and hash), and the cells not
yet stored are grouped by (dataset, model, defense), the unit of work an executor runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.accel import AUTO
from bench.attack import Attack
from bench.cache import Cache, stable_hash
from bench.config import RunConfig
from bench.data import get_dataset
from bench.errors import ConfigError
from bench.registry import ATTACKS, DEFENSES, MODELS
from bench.seeds import derive_seed
from bench.session import SPLIT, Session, baseline_name
from bench.suite import AttackSuite
from bench.threat import DEFAULT_THREATS, Threat, eot_draws

log = logging.getLogger(__name__)

#: How an executor resolves ``--batch-size auto`` for a session's grid of defenses.
BatchProbe = Callable[[Session, list[str]], dict[str, Any]]


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

    def shared_sets(self) -> list[tuple[Attack, Threat]]:
        """The adversarial sets the cells read that no defense is part of (their target is
        :attr:`~bench.threat.Target.shared`), by attack and threat: what one computation
        serves for every defense. A suite's cells read none (it crafts on its survivors)."""
        out = []
        for c in self.cells:
            if isinstance(c.attack, AttackSuite):
                continue
            target = self.session.target_of(c.threat, self.defense, c.attack)
            if target.shared:
                out.append((c.attack, target.threat))
        return out


class Planner:
    """Plans a :class:`RunConfig` grid: its sessions, their cells and the groups still to run.

    Args:
        cfg: the grid.
        cache: the weight and tensor cache the sessions share.
    """

    def __init__(self, cfg: RunConfig, cache: Cache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or Cache()

    def session(self, dataset: str, model: str | None,
                batch_auto: dict[str, Any] | None = None) -> Session:
        """The session of one (dataset, model) of the grid."""
        return Session.for_config(self.cfg, dataset, model, cache=self.cache,
                                  batch_auto=batch_auto)

    def sessions(self, probe: BatchProbe | None = None) -> list[Session]:
        """One session per (dataset, model) of the grid, every one of them checked (names,
        options, data files) before anything is trained; under ``--batch-size auto`` its size
        resolved by ``probe`` (default: here) before any cell is planned (the size is in every
        cell's hash)."""
        validate_names(self.cfg)
        out = []
        for ds_name in self.cfg.datasets:
            info = get_dataset(ds_name, root=self.cfg.data_root).info
            for model_name in self.cfg.models or (info.models[0],):
                out.append(self.session(ds_name, model_name))
        transfer = Threat.TRANSFER in threats_for(self.cfg)
        for s in out:
            s.validate(self.defenses(), self.cfg.attacks, self.cfg.eps, source=transfer)
        if self.cfg.batch_size == AUTO:
            for s in out:
                if s.batch_auto is None:
                    s.batch_auto = (probe or _probe_here)(s, self.defenses())
        return out

    def groups(self, sessions: list[Session], done: Callable[[Iterable[str]], set[str]],
               ) -> tuple[list[str], list[Group]]:
        """The hashes of every cell of the grid, and its cells not yet stored (``done``: the
        hashes among those given that the store holds) grouped by (dataset, model, defense):
        the unit of work an executor runs (the defense is fitted once and its clean accuracy
        measured once per group)."""
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
                stored = done(c.hash for c in cells)
                todo = [c for c in cells if c.hash not in stored]
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
            out["source"] = {"model": s.source_name, "key": s.models.pending_source.key}
        if suite:
            out["suite"] = [m.describe(attack.member(m)) for m in members]
        if s.cfg.attack_precision != "fp32":
            out["attack_precision"] = s.cfg.attack_precision
        return out


def _probe_here(session: Session, defenses: list[str]) -> dict[str, Any]:
    return session.resolve_batch_size(defenses)
