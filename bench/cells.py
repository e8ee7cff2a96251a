"""Evaluating a group of cells (one defense in one session): the clean pass, each attack cell
and each suite cell judged by the defended pipeline, and the result rows with their provenance.

An image counts as robust only when it is correct clean and under attack (AutoAttack's
convention). Every adversarial batch, and every whole set when it is used, is validated before
anything is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.accel import NondeterminismLog
from bench.attack import Attack
from bench.cache import stable_hash
from bench.defense import MODEL, PREPROCESSOR, Defense
from bench.plan import Cell
from bench.provenance import git_revision, versions
from bench.seeds import derive_seed
from bench.session import SPLIT, Session
from bench.store import CellResult
from bench.stream import Images, take
from bench.suite import AttackSuite, Member
from bench.threat import Target, Threat, eot_draws, uses_bpda

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    """What produced a run's rows: library versions (torch's thread count included) and the
    project's git revision, taken once per process."""

    versions: dict[str, str] = field(default_factory=versions)
    git_rev: str = field(default_factory=git_revision)


def evaluate_group(s: Session, d_name: str, todo: list[Cell], made: Provenance,
                   ) -> Iterator[CellResult]:
    """The results of cells ``todo`` of defense ``d_name`` in session ``s``, one by one as
    each is computed (the caller stores them); ``made``: what every row records produced it."""
    t0 = time.perf_counter()
    setup_log = NondeterminismLog(active=s.device.type == "cuda" and
                                  bool(s.determinism["deterministic"]))
    with setup_log.watch():
        defense = s.defense(d_name)
        ident = stable_hash({"defense": s.defense_id(d_name), "slice": s.slice_id,
                             "classifier": s.pending_target.key, "seed": s.seed,
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
                out = evaluate_suite(s, c.attack, d_name, defense, clean, c.seed,
                                     c.attack.eot or s.eot)
                robust, loss = out.robust, None
                extra["suite"] = {"members": out.members, "first_break": out.first_break}
            else:
                robust, loss, attacked = attack_cell(s, c, defense, clean)
                extra["attacked"] = attacked
        extra["execution"] = {**s.execution(),
                              **({"nondeterministic_ops": ops.ops} if ops.ops else {})}
        result = _result(s, c, defense, clean, robust, loss, made,
                         time.perf_counter() - t1 + setup / len(todo), extra)
        log.info("%s/%s/%s %s %s eps=%.4g: robust accuracy %.4f", s.info.name, s.model_name,
                 d_name, c.attack.name, c.threat.value, c.eps, float(robust.float().mean()))
        yield result

def attack_cell(s: Session, c: Cell, defense: Defense, clean: torch.Tensor,
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
    target = s.target_of(c.threat, c.defense, c.attack)
    keep = None if target.shared or defense.randomized else clean
    x_adv = s.adversarial(c.attack, target, defense, keep=keep)
    loss_wanted = defense.kind == PREPROCESSOR and not defense.identity
    robust, loss = s.evaluate(defense, x_adv, c.seed, denoising_loss=loss_wanted)
    if keep is not None and loss is not None:
        loss = loss[keep]
    attacked = int(keep.sum()) if keep is not None else len(clean)
    return robust & clean, loss, attacked



def _result(s: Session, c: Cell, defense: Defense, clean: torch.Tensor, robust: torch.Tensor,
            loss: torch.Tensor | None, made: Provenance, wall: float, extra: dict[str, Any],
            ) -> CellResult:
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
        seed=s.seed, clean_correct=clean.numpy().astype(np.uint8),
        robust_correct=robust.numpy().astype(np.uint8), wall_time=wall,
        device=str(s.device), git_rev=made.git_rev, attack_params=c.attack.describe(),
        defense_params=c.config["defense_params"], versions=made.versions,
        config=c.config, metadata=meta,
        denoise_loss=float(loss.mean()) if loss is not None and len(loss) else None,
        bpda=uses_bpda(c.threat, defense, c.attack.gradient_free),
    )


@dataclass
class SuiteResult:
    """What a suite cell records: per-image robustness (correct clean and under every member)
    and which member broke each image first (``first_break``: 0 = wrong clean, k = member k,
    1-based, None = survived), with the members' descriptions and counts."""

    robust: torch.Tensor
    first_break: list[int | None]
    members: list[dict[str, Any]]


def evaluate_suite(s: Session, suite: AttackSuite, d_name: str, defense: Defense,
                   clean: torch.Tensor, seed: int, eot: int) -> SuiteResult:
    """Run ``suite`` on defense ``d_name`` (``defense``, fitted) in session ``s`` from the clean
    correctness ``clean`` (bool, N): each member attacks only the images still correct, under
    its own threat model, and the defended pipeline judges each candidate (seeded from
    ``seed``). ``eot``: draws of a whitebox gradient member through a randomized defense."""
    alive = clean.clone()
    first: list[int | None] = [None if ok else 0 for ok in clean.tolist()]
    described = []
    for k, m in enumerate(suite.plan(defense), start=1):
        attack, t0 = suite.member(m), time.perf_counter()
        idx = alive.nonzero().flatten()
        draws = eot_draws(Threat(m.threat), defense, eot, attack.gradient_free)
        if len(idx):
            cand = _candidates(s, m, attack, d_name, defense, idx, draws, seed)
            ok, _ = s.evaluate(defense, cand, derive_seed(seed, m.label, "judge"), index=idx)
            broken = idx[~ok]
            alive[broken] = False
            for i in broken.tolist():
                first[i] = k
        else:
            broken = idx
        described.append({**m.describe(attack), "eot": draws,
                          "gradient_free": attack.gradient_free,
                          "bpda": uses_bpda(Threat(m.threat), defense, attack.gradient_free),
                          "attacked": len(idx), "broken": len(broken),
                          "wall_time": time.perf_counter() - t0})
        log.info("%s %s: %d of %d images broken", suite.name, m.label, len(broken), len(idx))
    return SuiteResult(alive, first, described)


def _candidates(s: Session, m: Member, attack: Attack, d_name: str, defense: Defense,
                idx: torch.Tensor, draws: int, seed: int) -> Images:
    """Member ``m``'s adversarial images for the slice's images at ``idx``: crafted on the
    survivors through the defense (whitebox), or taken from the set shared by every defense
    (oblivious, transfer: computed once for the whole slice and cached)."""
    threat = Threat(m.threat)
    if threat is not Threat.WHITEBOX:
        return take(s.adversarial(attack, s.target_of(threat, d_name, attack)), idx)
    model = Target.of(threat, defense, draws).model(s.classifier, defense)
    x, y = s.test
    return s.sets.craft(attack, model, take(x, idx), y[idx],
                        lambda i: derive_seed(seed, m.label, i))
