"""Import every plugin module of a built-in plugin package: a new plugin file needs no list entry.

A plugin package holds one-file plugins (``defenses/jpeg.py``) and family folders
(``defenses/hgd/``: the plugin module beside its private ``_``-prefixed helpers). Modules and
folders whose name starts with ``_`` are helpers, never imported as plugins.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str) -> None:
    """Import ``package``, its public submodules and, recursively, its public subpackages (each
    plugin module registers its variants when imported)."""
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        if info.ispkg:
            import_submodules(f"{package}.{info.name}")
        else:
            importlib.import_module(f"{package}.{info.name}")
