"""Up-front checks of a session: every name, option, plugin construction and data file a grid
will use, before anything is trained."""

from __future__ import annotations

from collections.abc import Sequence

from bench.data import SPLITS
from bench.defense import split_spec
from bench.options import check_scopes
from bench.session.attacks import SessionAttacks
from bench.session.defenses import SessionDefenses
from bench.session.roles import ModelRoles
from bench.session.slice import SPLIT
from bench.suite import AttackSuite
from bench.threat import Threat


def validate(roles: ModelRoles, defenses: SessionDefenses, attacks: SessionAttacks,
             defense_names: Sequence[str] = (), attack_names: Sequence[str] = (),
             eps: Sequence[float] = (), source: bool = False) -> None:
    """Check everything a session will use, before anything is trained: the data files, every
    option (scopes, names, types, values) and every plugin's construction (the members of an
    attack suite too); with ``source``, the transfer source model.

    Raises:
        BenchError: one line saying what is wrong and how to fix it.
    """
    models = roles.model_names
    check_scopes(roles.model_opts, "model", models, "--model-opt", known=list(models))
    parts = {name: defenses.parts(name) for name in defense_names
             if not defenses.unsupported(name)}
    grid = [*defense_names, *[split_spec(p)[0] for ps in parts.values() for p in ps.defenses]]
    check_scopes(roles.defense_opts, "defense", list(dict.fromkeys(grid)), "--defense-opt")
    check_scopes(attacks.attack_opts, "attack", list(attack_names), "--attack-opt")
    trains = not roles.pending_target.spec["pretrained"]  # building checks its options
    roles.pending_surrogates  # noqa: B018
    for name in defense_names:
        if not defenses.unsupported(name):
            trains |= defenses.built(name).needs_training
            roles.guide(name)
            trains |= defenses.check_parts(name, parts[name])
    for name in attack_names:
        for e in eps or (roles.info.default_eps,):
            attack = attacks.attack(name, e)
            attack.describe()  # a suite builds (and so checks) its members here
            members = attack.plan() if isinstance(attack, AttackSuite) else []
            source |= any(m.threat == Threat.TRANSFER for m in members)
    if source:
        trains |= not roles.pending_source.spec["pretrained"]
    roles.dataset.check(SPLITS if trains else (SPLIT,))  # nothing trains: test split only
