"""A plugin's constructor options: which it accepts, their checked types and values, and the
full set of arguments a registered variant is built with (defaults, then the variant's settings,
then the caller's), so that every resolved option is known before anything is built."""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable
from typing import Any

from bench.errors import ConfigError

# Options that count something (epochs, steps, images, queries, restarts, EOT draws): zero or a
# negative number would make a meaningless artifact (an untrained model, an attack that does
# nothing), so every plugin's options with these names must be integers >= 1 when given.
# Constructor arguments every plugin of a kind receives from the harness (the defense contract's
# input shape and classes, the attack contract's eps and seed): never an option.
HARNESS_SET = frozenset({"input_shape", "num_classes", "eps", "seed"})
COUNT_OPTIONS = frozenset({"epochs", "steps", "batch_size", "train_images", "fit_images",
                           "n_queries", "n_restarts", "restarts", "eot", "attack_steps"})
_PRIMITIVES = {"int": int, "float": float, "str": str, "bool": bool}


def _alternatives(annotation: Any) -> list[str] | None:
    """The ``|`` alternatives of a parameter's annotation as text (``"int | None"`` ->
    ``["int", "None"]``); None when it has none."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__",
                                                                    str(annotation))
    return [a.strip() for a in text.split("|")]


def _accepts(alt: str, value: Any) -> bool | None:
    """Whether ``value`` fits the annotation alternative ``alt`` (None: cannot tell)."""
    if alt == "None":
        return value is None
    if alt in _PRIMITIVES:
        if isinstance(value, bool):
            return alt == "bool"
        if alt == "float":
            return isinstance(value, (int, float))
        if alt == "int":
            return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return isinstance(value, _PRIMITIVES[alt])
    if alt.split("[")[0] in ("Sequence", "tuple", "list", "Tuple", "List"):
        return isinstance(value, (list, tuple))
    return None


def check_option(plugin: str, param: inspect.Parameter, value: Any) -> Any:
    """``value`` for the constructor parameter ``param`` of ``plugin``, normalized (``4.0`` for an
    int is ``4``, ``1`` for a float is ``1.0``; a number given to a text option is its text);
    a one-line ConfigError when it does not fit the annotation or is a count below 1."""
    alts = _alternatives(param.annotation)
    if alts is not None:
        verdicts = [_accepts(a, value) for a in alts]
        if not any(v is not False for v in verdicts):
            if "str" in alts and isinstance(value, (int, float)) and not isinstance(value, bool):
                return json.dumps(value)  # --defense-opt source=123 meant the text "123"
            example = "" if param.default in (inspect.Parameter.empty, None) else \
                f" (default {param.default!r})"
            raise ConfigError(f"'{plugin}' option {param.name}={value!r} must be "
                              f"{' or '.join(alts)}{example}: pass e.g. "
                              f"{plugin}.{param.name}={_example(alts, param.default)}.")
        if "int" in alts and isinstance(value, float) and value.is_integer() and \
                "float" not in alts:
            value = int(value)
        elif "float" in alts and "int" not in alts and isinstance(value, int) and \
                not isinstance(value, bool):
            value = float(value)
    if param.name in COUNT_OPTIONS and value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"'{plugin}' option {param.name}={value!r} must be an integer >= 1 "
                          f"(0 would make a meaningless artifact): pass e.g. "
                          f"{plugin}.{param.name}={_example(['int'], param.default)}.")
    return value


def _example(alts: list[str], default: Any) -> str:
    if default not in (inspect.Parameter.empty, None) and not isinstance(default, bool):
        return json.dumps(default) if not isinstance(default, str) else default
    return {"int": "1", "float": "0.1", "bool": "true", "str": "TEXT"}.get(
        next((a for a in alts if a != "None"), "str"), "VALUE")


def accepted_options(builder: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters ``builder`` takes, by name; None when it takes any (``**kw``) or
    has no inspectable signature."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {p.name: p for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def resolve_options(name: str, builder: Callable[..., Any],
                    params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the builder's signature (names and annotated types) and with
    its defaults filled in; an unknown option or a wrong type is a one-line ConfigError that
    suggests the closest option."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):
        return params
    accepted = {p.name: p for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            close = [c for u in unknown for c in difflib.get_close_matches(u, accepted, n=1)]
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            options = [a for a in accepted if a not in HARNESS_SET]
            raise ConfigError(f"'{name}' takes no option {', '.join(unknown)}.{hint} It "
                              f"accepts: {', '.join(options) or 'none'}.")
    checked = {k: check_option(name, accepted[k], v) if k in accepted else v
               for k, v in params.items()}
    filled = {p.name: p.default for p in accepted.values() if p.default is not p.empty}
    return {**filled, **checked}
