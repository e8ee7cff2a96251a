"""Plugin options at the boundary: which plugin an option is for, and what nobody would use.

``--defense-opt``, ``--attack-opt`` and ``--model-opt`` take ``key=value`` (every plugin of the
grid whose constructor takes ``key``) or ``NAME.key=value`` (plugin ``NAME`` only). Nothing is
dropped silently: a scope that is not in the grid, or not a registered name, is an error with the
closest names; a bare option that no plugin of the grid takes is an error with the closest
option; options the harness sets itself (the dataset's shape, eps, the seed) are refused with
the flag to use instead. Values are checked against each constructor's annotations when the
plugin is resolved (:func:`bench.signature.check_option`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from bench.errors import ConfigError
from bench.registry import ATTACKS, DEFENSES, MODELS, Registry
from bench.signature import accepted_options

REGISTRY: dict[str, Registry[Any]] = {"defense": DEFENSES, "attack": ATTACKS, "model": MODELS}
# set by the harness, not by an option: the option that sets it instead
RESERVED = {
    "defense": {"input_shape": "the dataset", "num_classes": "the dataset"},
    "attack": {"eps": "--eps", "seed": "--seed"},
    "model": {"input_shape": "the dataset", "num_classes": "the dataset", "seed": "--seed"},
}
RECIPE = ("epochs", "lr", "batch_size", "train_images")  # every trained classifier's recipe
GUIDE = "guide"  # a trainable defense's option the harness handles: the model it is trained on


def scoped(opts: dict[str, Any], name: str,
           builder: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The options of ``opts`` meant for plugin ``name``: ``name.key=v`` always, and bare
    ``key=v`` when ``builder`` (given) takes ``key`` (or takes any keyword). A scoped option
    wins over a bare one of the same key, whatever their order."""
    params = accepted_options(builder) if builder is not None else {}
    bare: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in opts.items():
        scope, dot, param = key.rpartition(".")
        if dot and scope == name:
            own[param] = value
        elif not dot and builder is not None and (params is None or key in params):
            bare[key] = value
    return {**bare, **own}


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _takes(kind: str, name: str) -> set[str] | None:
    """The options plugin ``name`` of ``kind`` takes (None: any)."""
    params = accepted_options(REGISTRY[kind].get(name).builder)
    if params is None:
        return None
    extra = set(RECIPE) if kind == "model" else set()
    if kind == "defense" and getattr(REGISTRY[kind].get(name).builder, "needs_training", False):
        extra.add(GUIDE)  # the harness trains it against another model (Session.guide)
    return (set(params) | extra) - set(RESERVED[kind])


def check_scopes(opts: dict[str, Any], kind: str, grid: Sequence[str], flag: str,
                 known: Sequence[str] | None = None) -> None:
    """Raise a one-line ConfigError for an option of ``opts`` that would reach no plugin of
    ``grid`` (the ``kind`` plugins this run uses), or that the harness sets itself.

    Args:
        opts: ``key`` / ``NAME.key`` -> value.
        kind: ``defense``, ``attack`` or ``model``.
        grid: the plugin names of that kind in the run.
        flag: the command-line flag, for the message (``--defense-opt``).
        known: the names a scope may take (default: ``grid``).
    """
    registry, allowed = REGISTRY[kind], list(known or grid)
    for key in opts:
        scope, dot, param = key.rpartition(".")
        if param in RESERVED[kind]:
            raise ConfigError(f"{flag} {key}: {param} is set by {RESERVED[kind][param]}, not by "
                              f"an option.")
        if dot:
            if scope in allowed:
                continue
            if scope in registry:
                article = "an" if kind[0] in "aeiou" else "a"
                raise ConfigError(f"{flag} {key}: '{scope}' is not {article} {kind} of this run "
                                  f"({', '.join(allowed) or 'none'}); add it or drop the "
                                  f"option.")
            raise ConfigError(f"{flag} {key}: there is no {kind} '{scope}'."
                              f"{_suggest(scope, [*allowed, *registry.names()])} See: python -m "
                              f"bench list {kind}s")
        takers = {name: _takes(kind, name) for name in grid}
        if any(t is None or param in t for t in takers.values()):
            continue
        options = sorted({o for t in takers.values() if t for o in t})
        raise ConfigError(f"{flag} {key}: no {kind} of this run ({', '.join(grid) or 'none'}) "
                          f"takes an option '{param}'.{_suggest(param, options)} Options they "
                          f"take: {', '.join(options) or 'none'}.")
