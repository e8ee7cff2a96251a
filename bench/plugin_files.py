"""Plugins from a file or a folder, without packaging: ``--plugins PATH``.

A plugin file is a Python file whose classes carry the registry decorators
(``@register_defense("my-blur")``, ``@register_attack``, ``@register_model``,
``@register_dataset``), the way ``timm.register_model`` is used in a script. ``--plugins`` takes
a file or a folder (every ``*.py`` file in it, in name order, skipping ``_``-prefixed helpers), is
repeatable, and is also read from ``$BENCH_PLUGINS`` (paths separated by ``os.pathsep``) and from
the ``plugins`` field of a :class:`~bench.config.RunConfig`.

Each file is imported once per process as the module ``bench_plugin_files.<stem>``: a stable name
(a defense's class path is part of its weight key), so two files with the same stem are refused.
The built-in plugins are registered first, so a name that clashes with one is an error naming
both files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from bench.errors import BenchError, ConfigError, DuplicatePluginError, PluginImportError
from bench.registry import REGISTRIES

ENV_PLUGINS = "BENCH_PLUGINS"
PACKAGE = "bench_plugin_files"
# module name -> the file it was imported from (what ``list`` shows as an entry's origin)
LOADED: dict[str, Path] = {}


def env_paths() -> list[str]:
    """The plugin paths of ``$BENCH_PLUGINS`` (``os.pathsep``-separated; empty parts ignored)."""
    return [p for p in os.environ.get(ENV_PLUGINS, "").split(os.pathsep) if p.strip()]


def plugin_files(path: str | os.PathLike[str]) -> list[Path]:
    """The plugin files ``path`` names: the file itself, or a folder's public ``*.py`` files."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.glob("*.py") if not f.name.startswith("_"))
        if not files:
            raise ConfigError(f"--plugins {path}: the folder holds no plugin file (*.py not "
                              f"starting with '_'). Put your decorated plugins in a .py file.")
        return [f.resolve() for f in files]
    if not p.exists():
        raise ConfigError(f"--plugins {path}: no such file or folder. Pass a .py file or a "
                          f"folder of them.")
    if p.suffix != ".py":
        raise ConfigError(f"--plugins {path}: not a Python file. Pass a .py file holding "
                          f"decorated plugins, or a folder of them.")
    return [p.resolve()]


def module_name(path: Path) -> str:
    """The module a plugin file is imported as (stable: it names the file's classes in keys)."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem)
    return f"{PACKAGE}.{stem}"


def load_plugins(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Import the plugin files of ``paths`` (each once per process); return their module names.

    Raises:
        ConfigError: a missing path, a non-Python file, two files with the same name.
        PluginImportError: a file fails to import, or registers nothing.
        DuplicatePluginError: a name registered twice (both files named).
    """
    for registry in REGISTRIES.values():  # built-ins first: a clash then names the user's file
        registry.load()
    names = []
    for path in paths:
        for file in plugin_files(path):
            names.append(_load_file(file))
    return names


def _load_file(file: Path) -> str:
    name = module_name(file)
    if name in LOADED:
        if LOADED[name] != file:
            raise ConfigError(f"Two plugin files are named {file.name}: {LOADED[name]} and "
                              f"{file}. Rename one of them.")
        return name
    before = {k: (set(r._entries), set(r._prefixes)) for k, r in REGISTRIES.items()}
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise PluginImportError(f"Plugin file {file} cannot be imported as Python.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    LOADED[name] = file
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name], LOADED[name]
        if isinstance(exc, (DuplicatePluginError, BenchError)) or not isinstance(exc, Exception):
            raise
        where = _traceback_line(exc, file)
        raise PluginImportError(f"Plugin file {file} failed to import{where}: "
                                f"{type(exc).__name__}: {exc}. Fix the file.") from exc
    added = any(set(r._entries) - before[k][0] or set(r._prefixes) - before[k][1]
                for k, r in REGISTRIES.items())
    if not added:
        raise PluginImportError(
            f"Plugin file {file} registered nothing: decorate its classes with "
            f"@register_defense(\"NAME\") (or register_attack, register_model, "
            f"register_dataset from bench.registry).")
    return name


def _traceback_line(exc: BaseException, file: Path) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def origin(module: str) -> str:
    """Where the plugin defined in ``module`` comes from: ``built-in``, the plugin file's path,
    or the installed distribution that provides it (``package NAME``)."""
    if module in LOADED:
        return str(LOADED[module])
    top = module.split(".")[0]
    if top == "bench":
        return "built-in"
    try:
        dists = importlib.metadata.packages_distributions().get(top)
    except Exception:  # noqa: BLE001 - a broken installation's metadata: say what is known
        dists = None
    return f"package {dists[0]}" if dists else f"module {module}"

