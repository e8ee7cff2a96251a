"""One generic registry type, with instances for defenses, attacks, datasets and models.

A plugin registers each named variant with one decorator next to the thing it builds::

    @register_attack("pgd10", steps=10)
    @register_attack("pgd100", steps=100)
    class PGD(Attack): ...

Names are lower case ``[a-z0-9_-]``; listing takes globs and returns names in natural order; an
unknown name raises :class:`UnknownPluginError` with the closest names and the command that lists
them; a duplicate name is an error at import time. Third-party plugins register through the entry
point groups ``bench.defenses``, ``bench.attacks``, ``bench.datasets`` and ``bench.models``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from bench.errors import (
    ConfigError,
    DuplicatePluginError,
    PluginImportError,
    UnknownPluginError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``pgd10`` before ``pgd100`` and ``resnet18`` before ``resnet101``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered variant: the builder, the settings the variant fixes, and where it lives."""

    name: str
    builder: Callable[..., T]
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    module: str = ""

    @property
    def kind(self) -> str:
        """The plugin's declared kind (``preprocessor``/``model`` for defenses), else ``-``."""
        return str(getattr(self.builder, "kind", "-"))

    def resolve(self, **kwargs: Any) -> dict[str, Any]:
        """The full constructor arguments: defaults, then the variant's settings, then kwargs."""
        return _resolve(self.name, self.builder, {**self.overrides, **kwargs})

    def build(self, **kwargs: Any) -> T:
        """Build the variant; ``kwargs`` override the variant's registered settings.

        The built object records every constructor argument, defaults filled in, as ``params``
        (so a changed default changes every cache key and config hash that includes it).
        """
        params = self.resolve(**kwargs)
        obj = self.builder(**params)
        try:
            obj.registry_name = self.name  # type: ignore[attr-defined]
            obj.params = params  # type: ignore[attr-defined]
        except AttributeError:  # builders may return immutable objects
            pass
        return obj


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


def _resolve(name: str, builder: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
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


def _describe(obj: Any, description: str | None) -> str:
    if description:
        return description
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


class Registry(Generic[T]):
    """A name -> builder table of one kind of plugin.

    Args:
        kind: singular noun used in messages and in ``python -m bench list <kind>s``.
        builtin: package imported on first use to register the built-in plugins.
        group: entry-point group of third-party plugins.
    """

    def __init__(self, kind: str, builtin: str | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.builtin = builtin
        self.group = group
        self._entries: dict[str, Entry[T]] = {}
        self._prefixes: dict[str, Entry[T]] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(
        self, name: str, *, description: str | None = None, **overrides: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``name`` as the decorated builder with ``overrides`` fixed."""
        if not NAME_RE.match(name):
            raise ValueError(f"Invalid {self.kind} name {name!r}: use lower case [a-z0-9_-].")

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            self._add(Entry(name, builder, dict(overrides), _describe(builder, description),
                            getattr(builder, "__module__", "")))
            return builder

        return deco

    def register_prefix(
        self, prefix: str, *, description: str | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register a family addressed as ``prefix:<name>`` (e.g. ``timm:inception_v3``).

        The builder receives the part after the colon as its first positional argument.
        """

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if prefix in self._prefixes:
                raise DuplicatePluginError(
                    f"{self.kind} prefix '{prefix}:' registered twice "
                    f"({self._prefixes[prefix].module} and {builder.__module__})."
                )
            self._prefixes[prefix] = Entry(f"{prefix}:<name>", builder, {},
                                           _describe(builder, description), builder.__module__)
            return builder

        return deco

    def _add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            other = self._entries[entry.name]
            raise DuplicatePluginError(
                f"{self.kind} '{entry.name}' is registered twice: in {other.module} and in "
                f"{entry.module}. Rename one of them."
            )
        self._entries[entry.name] = entry

    def adopt(self, entries: list[Entry[T]]) -> None:
        """Register ``entries`` (another process's, e.g. a driver's own plugins shipped to a
        worker) whose names are not registered here yet."""
        self.load()
        for entry in entries:
            if entry.name not in self._entries:
                self._add(entry)

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in plugins and the third-party entry points, once.

        A failure is raised again on every later use rather than leaving a half-filled registry.
        """
        if self._loaded:
            return
        self._loaded = True  # set first: a plugin may look names up while it registers
        try:
            if self.builtin:
                importlib.import_module(self.builtin)
            for ep in metadata.entry_points(group=self.group) if self.group else ():
                self._load_entry_point(ep)
        except BaseException:
            self._loaded = False
            raise

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        """Import one entry point; a failure, or a module that registers nothing here, is a
        PluginImportError naming the package (never a silently missing plugin)."""
        try:
            ep.load()
        except DuplicatePluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is reported, never skipped
            raise PluginImportError(
                f"Third-party {self.kind} plugin '{ep.name}' ({ep.value}, entry point "
                f"group '{self.group}') failed to import: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall that package."
            ) from exc
        # Judged by the entries' modules, not by what this load added: a module registering
        # defenses and attacks (two entry points) is already imported when the second one loads.
        module = ep.module
        if not any(e.module == module or e.module.startswith(module + ".")
                   for e in (*self._entries.values(), *self._prefixes.values())):
            dist = getattr(ep, "dist", None)
            package = f", package {dist.name}" if dist is not None and dist.name else ""
            raise PluginImportError(
                f"Third-party {self.kind} plugin '{ep.name}' ({ep.value}{package}) loaded but "
                f"registered no {self.kind}: its module must apply @register_{self.kind} when "
                f"imported (a folder named '{module.split('.')[0]}' in the current directory "
                f"can shadow the installed module)."
            )

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """All registered names, in natural order."""
        self.load()
        return sorted(self._entries, key=natural_key)

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching the glob ``pattern``, in natural order."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern.lower())]

    def entries(self, pattern: str = "*") -> Iterator[Entry[T]]:
        """Entries matching ``pattern``, then the prefix families when ``pattern`` is ``*``."""
        for name in self.list(pattern):
            yield self._entries[name]
        if pattern == "*":
            yield from self._prefixes.values()

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownPluginError:
            return False
        return True

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name`` (or a ``prefix:<name>`` entry bound to that name)."""
        self.load()
        if name in self._entries:
            return self._entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes and rest:
            fam = self._prefixes[prefix]
            bound = _bind_prefix(fam.builder, rest)
            return Entry(name, bound, {}, fam.description, fam.module)
        raise UnknownPluginError(self._unknown_message(name))

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the variant ``name``; ``kwargs`` override its registered settings."""
        return self.get(name).build(**kwargs)

    def where(self, name: str) -> str:
        """The module that registered ``name``."""
        return self.get(name).module

    def _unknown_message(self, name: str) -> str:
        prefix, sep, rest = name.partition(":")
        if sep and rest:  # a family name with a mistyped prefix: 'tim:resnet18' -> 'timm:resnet18'
            close = [f"{p}:{rest}" for p in difflib.get_close_matches(
                prefix.lower(), list(self._prefixes), n=3, cutoff=0.5)]
        else:
            known = self.names() + [f"{p}:" for p in self._prefixes]
            close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (f"Unknown {self.kind} '{name}'.{hint} "
                f"See: python -m bench list {self.kind}s")


def _bind_prefix(builder: Callable[..., T], arg: str) -> Callable[..., T]:
    def bound(**kwargs: Any) -> T:
        return builder(arg, **kwargs)

    bound.kind = getattr(builder, "kind", "-")  # type: ignore[attr-defined]
    bound.__doc__ = builder.__doc__
    try:  # the builder's options, less the bound name: checked like any plugin's
        sig = inspect.signature(builder)
        bound.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=list(sig.parameters.values())[1:])
    except (TypeError, ValueError):
        pass
    return bound


DEFENSES: Registry[Any] = Registry("defense", "defenses", "bench.defenses")
ATTACKS: Registry[Any] = Registry("attack", "attacks", "bench.attacks")
DATASETS: Registry[Any] = Registry("dataset", "bench.data", "bench.datasets")
MODELS: Registry[Any] = Registry("model", "bench.models", "bench.models")

register_defense = DEFENSES.register
register_attack = ATTACKS.register
register_dataset = DATASETS.register
register_model = MODELS.register

REGISTRIES: dict[str, Registry[Any]] = {
    "defenses": DEFENSES, "attacks": ATTACKS, "datasets": DATASETS, "models": MODELS,
}
