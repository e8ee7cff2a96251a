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
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from bench.errors import (
    DuplicatePluginError,
    PluginImportError,
    UnknownPluginError,
)
from bench.signature import resolve_options

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
        return resolve_options(self.name, self.builder, {**self.overrides, **kwargs})

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


def registered_name(obj: Any) -> str:
    """The name ``obj`` was built under (:meth:`Entry.build` records it), else its class name in
    lower case (an object made by hand, e.g. in a test): the one place that asks."""
    return str(getattr(obj, "registry_name", type(obj).__name__.lower()))


def registered_params(obj: Any) -> dict[str, Any]:
    """Every constructor argument ``obj`` was built with, defaults filled in (:meth:`Entry.build`
    records them); empty for an object made by hand."""
    return dict(getattr(obj, "params", {}))


def _file_of(module: str) -> str:
    """The file ``module`` was imported from (a plugin file's path), else the module's name."""
    mod = sys.modules.get(module)
    return str(getattr(mod, "__file__", None) or module)


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
                f"{self.kind} '{entry.name}' is registered twice: in {_file_of(other.module)} "
                f"and in {_file_of(entry.module)}. Rename one of them."
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


# The built-in plugins: the folders defenses/ and attacks/, installed as bench.defenses and
# bench.attacks (setup.py) so that no folder of a user's named like them can shadow them.
DEFENSES: Registry[Any] = Registry("defense", "bench.defenses", "bench.defenses")
ATTACKS: Registry[Any] = Registry("attack", "bench.attacks", "bench.attacks")
DATASETS: Registry[Any] = Registry("dataset", "bench.data", "bench.datasets")
MODELS: Registry[Any] = Registry("model", "bench.models", "bench.models")

register_defense = DEFENSES.register
register_attack = ATTACKS.register
register_dataset = DATASETS.register
register_model = MODELS.register

REGISTRIES: dict[str, Registry[Any]] = {
    "defenses": DEFENSES, "attacks": ATTACKS, "datasets": DATASETS, "models": MODELS,
}

# Before the move the built-ins were the top-level packages ``defenses`` and ``attacks``, and a
# defense's class path is part of its weight key (Defense.cache_key), hence of every cell hash.
# Recorded under the old names, the weights and cells of stores written before stay valid.
_RECORDED_AS = {DEFENSES.builtin: "defenses", ATTACKS.builtin: "attacks"}


def recorded_module(module: str) -> str:
    """``module``'s name wherever a module path is hashed or stored: a built-in plugin's under its
    former top-level name (``bench.defenses.hgd.hgd`` -> ``defenses.hgd.hgd``), any other as is."""
    for package, old in _RECORDED_AS.items():
        if module == package or module.startswith(f"{package}."):
            return old + module[len(package):]
    return module


def recorded_class(cls: type) -> str:
    """The dotted path of ``cls`` that keys and hashes record (see :func:`recorded_module`)."""
    return f"{recorded_module(cls.__module__)}.{cls.__qualname__}"
