"""``bench audit``: run exactly the cells the gradient-masking checks need, then print the
checklist per defense.

The cells go through the runner like any grid (stored, resumable, shown on the leaderboard):

* the single-step and the iterative attack, oblivious and whitebox (SS, WO);
* the iterative attack with twice its steps (NC);
* the iterative attack at eps/2 and 2 eps (EPS) and at eps = 1 (UB);
* the score-based attack and the noise control (whitebox) and the iterative attack as a
  transfer attack from the source model (BB).

Three checks are not attack cells and are stored beside them, keyed by the row
(:func:`bench.store.row_id`): the fraction of images whose input gradient of the loss is exactly
zero at the clean image, through the defense as the attacker sees it (BPDA where declared, EOT
where randomized) (ZG), whether two forward passes of a defense that declares itself
deterministic agree (ND), and the planted-example test of the attack suite's strength
(:mod:`bench.planted`, PT). Which attack plays which role is declared by the attack plugins
(``Attack.audit_role``); the suite is the first registered :class:`~bench.suite.AttackSuite`;
the core names none.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from bench.cache import stable_hash
from bench.config import RunConfig, format_eps
from bench.errors import ConfigError
from bench.executors import run_grid
from bench.options import scoped
from bench.plan import Planner
from bench.planted import PlantedSpec, planted_test
from bench.registry import ATTACKS
from bench.report.flags import LEGEND, UNBOUNDED, findings, undecided
from bench.report.identity import identify
from bench.seeds import derive_seed
from bench.session import Session
from bench.store import Store, row_id
from bench.suite import AttackSuite
from bench.threat import Threat, attacked_model, eot_draws

log = logging.getLogger(__name__)


def role(name: str, steps: int | None = None) -> str:
    """The registered attack playing audit role ``name``: of the attacks declaring it, the
    variant registered with ``steps`` (when given and one is), else the first in natural
    order."""
    entries = [e for e in ATTACKS.entries() if getattr(e.builder, "audit_role", None) == name]
    if not entries:
        raise ConfigError(f"No registered attack declares audit_role = {name!r}; the audit "
                          f"needs one (see bench/attack.py).")
    exact = [e for e in entries if steps is not None and e.overrides.get("steps") == steps]
    return (exact or entries)[0].name


def _grid(cfg: RunConfig, attacks: tuple[str, ...], threats: tuple[str, ...],
          eps: tuple[float, ...], **opts: Any) -> RunConfig:
    """``cfg`` with these attacks, threats, eps and options (the user's ``--attack-opt`` kept
    for the attacks of this grid and for all when unscoped)."""
    mine = {k: v for k, v in cfg.attack_opts.items()
            if "." not in k or k.rpartition(".")[0] in attacks}
    return replace(cfg, attacks=attacks, threats=threats, eps=eps,
                   attack_opts={**mine, **opts})


def plans(cfg: RunConfig, eps: float, steps: int, n_queries: int) -> list[RunConfig]:
    """The grids the checks need, for ``cfg``'s dataset, defenses and slice."""
    single, it = role("single-step"), role("iterative", steps)
    score, noise = role("score-based"), role("noise")
    wide = tuple(sorted({eps / 2, min(2 * eps, UNBOUNDED)} - {eps}))
    budget = {f"{it}.steps": steps}
    return [
        _grid(cfg, (single, it), ("oblivious", "whitebox"), (eps,), **budget),
        _grid(cfg, (it,), ("whitebox",), (eps,), **{f"{it}.steps": 2 * steps}),
        _grid(cfg, (it,), ("whitebox",), (*wide, UNBOUNDED), **budget),
        _grid(cfg, (score, noise), ("whitebox",), (eps,), **{f"{score}.n_queries": n_queries}),
        _grid(cfg, (it,), ("transfer",), (eps,), **budget),
    ]


def input_gradients(s: Session, defense: str, seed: int) -> dict[str, Any]:
    """ZG: how many clean images of the slice get an all-zero input gradient of the
    cross-entropy through the whitebox attacked model (BPDA where declared, EOT where
    randomized)."""
    d = s.defense(defense)
    model, _ = attacked_model(Threat.WHITEBOX, s.classifier, d,
                              eot=eot_draws(Threat.WHITEBOX, d, s.eot))
    x, y = s.test
    zero = 0
    for i, idx in enumerate(torch.arange(len(y)).split(s.batch_size)):
        torch.manual_seed(derive_seed(seed, "gradient", i))
        xb = x[idx].to(s.device).requires_grad_(True)
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(model(xb), y[idx].to(s.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
        zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    through = "BPDA" if not d.differentiable else "the defense's own gradient"
    return {"count": zero, "n": len(y), "value": zero / max(len(y), 1),
            "through": f"through {through}" + (" with EOT" if d.randomized else "")}


@torch.no_grad()
def determinism(s: Session, defense: str) -> dict[str, Any]:
    """ND: two forward passes of the defended pipeline under different seeds; how many images
    get logits that differ (beyond 1e-5 relative)."""
    d = s.defense(defense)
    pipeline, _ = attacked_model(Threat.WHITEBOX, s.classifier, d)
    x, _ = s.test
    count, worst = 0, 0.0
    for idx in torch.arange(len(x)).split(s.batch_size):
        xb = x[idx].to(s.device)
        torch.manual_seed(1)
        a = pipeline(xb)
        torch.manual_seed(2)
        b = pipeline(xb)
        diff = (a - b).abs().flatten(1).amax(1)
        count += int((diff > 1e-5 * (1 + a.abs().flatten(1).amax(1))).sum())
        worst = max(worst, float(diff.max()) if len(diff) else 0.0)
    return {"count": count, "n": len(x), "value": count / max(len(x), 1), "max_diff": worst,
            "randomized": bool(d.randomized)}


def suite_name() -> str:
    """The attack suite whose strength the planted-example test checks: the first registered
    :class:`~bench.suite.AttackSuite`, in natural order."""
    for e in ATTACKS.entries():
        if isinstance(e.builder, type) and issubclass(e.builder, AttackSuite):
            return e.name
    raise ConfigError("No registered attack is an AttackSuite; the planted-example test runs "
                      "one (see bench/suite.py), or pass --planted-n 0.")


def planted_examples(s: Session, defense: str, eps: float, spec: PlantedSpec, cfg: RunConfig,
                     stored: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """PT: the planted-example test (:func:`bench.planted.planted_test`) of the suite's
    gradient members, built with the run's ``--attack-opt SUITE.KEY=...`` and ``spec.steps``,
    on the first ``spec.n`` images of the slice; None when ``stored`` (the row's stored
    result) was measured with the same budget (spec, eps, suite, EOT draws)."""
    name = suite_name()
    opts = {**scoped(cfg.attack_opts, name), "steps": spec.steps}
    suite = ATTACKS.get(name).build(eps=eps, seed=cfg.seed, **opts)
    eot = suite.eot or s.eot
    budget = stable_hash({"spec": asdict(spec), "eps": eps, "eot": eot,
                          "suite": [name, suite.describe()], "seed": cfg.seed})
    if stored is not None and stored.get("budget") == budget:
        return None
    x, _ = s.test
    images = x[torch.arange(min(spec.n, len(x)))].to(s.device)
    return {**planted_test(s.classifier, s.defense(defense), images, eps, suite, spec, eot,
                           derive_seed(cfg.seed, "planted")), "budget": budget}


def run_audit(cfg: RunConfig, store: Store, eps: float | None = None, steps: int = 100,
              n_queries: int = 1000, planted: PlantedSpec | None = None,
              ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, str]]]:
    """Run the checks' cells and stored checks for ``cfg``'s dataset and defenses; return each
    defense row's findings, raised or not (row key -> findings, as
    :func:`bench.report.flags.findings`) and the checks it could not decide (row key -> code ->
    why, :func:`bench.report.flags.undecided`). ``planted``: the planted-example test's budget
    (default :class:`~bench.planted.PlantedSpec`; ``n=0`` skips it)."""
    planted = PlantedSpec() if planted is None else planted
    if len(cfg.datasets) != 1:
        raise ConfigError("bench audit takes one --dataset.")
    session = Session.for_config(cfg, cfg.datasets[0], cfg.models[0] if cfg.models else None)
    eps = session.info.default_eps if eps is None else eps
    hashes: list[str] = []
    for plan in plans(cfg, eps, steps, n_queries):
        hashes += run_grid(plan, store)
    frame = store.frame(hashes)
    for name in Planner(cfg).defenses():  # the undefended baseline too
        rows = frame[frame["defense"] == name]
        if not len(rows):
            continue
        rid = row_id(rows.iloc[0]["config"])
        done = store.checks().get(rid, {})
        if "zero_gradients" not in done:
            store.add_check(rid, "zero_gradients", **_split(input_gradients(session, name,
                                                                            cfg.seed)))
        if "nondeterministic" not in done:
            store.add_check(rid, "nondeterministic", **_split(determinism(session, name)))
        pt = planted_examples(session, name, eps, planted, cfg, done.get("planted")) \
            if planted.n else None
        if pt is not None:  # measured anew: another budget replaces the stored result
            store.add_check(rid, "planted", **_split(pt), replace=True)
    frame = store.frame(hashes)
    cells = identify(frame)
    return findings(cells, frame.attrs["checks"]), undecided(cells, frame.attrs["checks"])


def _split(result: dict[str, Any]) -> dict[str, Any]:
    return {"value": result["value"], "detail": {k: v for k, v in result.items()
                                                 if k != "value"}}


def checklist(found: dict[str, list[dict[str, Any]]], eps: float,
              na: dict[str, dict[str, str]] | None = None) -> str:
    """The audit's report: per defense row, every check with FLAG and the figures of each
    raised finding, pass and the figures of the closest one (the largest measured value), or
    n/a and why it could not be decided. ``found``: row key -> findings
    (:func:`bench.report.flags.findings`; a finding without ``raised`` counts as raised)."""
    lines = [f"Gradient-masking checklist at eps {format_eps(eps)} (a flag is a warning, not a "
             f"verdict):"]
    for key, row in found.items():
        lines.append(f"\n{key}")
        for code, text in LEGEND.items():
            mine = [f for f in row if f["code"] == code]
            raised = [f for f in mine if f.get("raised", True)]
            why = (na or {}).get(key, {}).get(code)
            if raised:
                mark, tail = "FLAG", ": " + "; ".join(f["detail"] for f in raised)
            elif mine:
                mark, tail = "pass", ": " + max(mine, key=lambda f: f["value"])["detail"]
            else:
                mark, tail = ("n/a ", f" ({why})") if why else ("pass", "")
            lines.append(f"  [{mark}] {code} {text.split(':')[0]}{tail}")
    return "\n".join(lines) + "\n"
