"""What a contract check is, how its outcome is reported, and how a test registers a throwaway
plugin without leaking it into later tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bench.registry import Registry

W = TypeVar("W")  # the workbench a check runs on (fitted defenses, or attack data)
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class CheckFailed(AssertionError):
    """A plugin breaks the contract; the message says what was measured and what to fix."""


class CheckSkipped(Exception):
    """A check that does not apply to a plugin; the message says why."""


def require(condition: Any, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``condition`` holds."""
    __tracebackhide__ = True  # pytest shows the check's line, not this one
    if not condition:
        raise CheckFailed(message)


@dataclass(frozen=True)
class Check(Generic[W]):
    """One contract check of one kind of plugin.

    Attributes:
        name: short kebab-case name (``fit-lowers-loss``), shown in every report line.
        summary: what it verifies, in one line (``python -m bench check --list``).
        run: ``run(workbench, plugin_name)``; returns when the plugin passes, raises
            :class:`CheckFailed` (or any error the plugin raises) when not, and
            :class:`CheckSkipped` when the check does not apply to it.
    """

    name: str
    summary: str
    run: Callable[[W, str], None]


@dataclass(frozen=True)
class Outcome:
    """The result of one check on one plugin."""

    kind: str
    plugin: str
    check: str
    status: str
    reason: str = ""

    def line(self) -> str:
        """``PASS defense blur3 forward`` or ``FAIL attack x fooling: why`` (one line)."""
        text = f"{self.status} {self.kind} {self.plugin} {self.check}"
        return f"{text}: {self.reason}" if self.reason else text


def outcome(check: Check[W], workbench: W, kind: str, name: str) -> Outcome:
    """Run ``check`` on plugin ``name`` and say how it went, never raising for the plugin's
    errors: a failure's reason is its message (an unexpected error's type and message)."""
    try:
        check.run(workbench, name)
    except CheckSkipped as exc:
        return Outcome(kind, name, check.name, SKIP, _one_line(str(exc)))
    except CheckFailed as exc:
        return Outcome(kind, name, check.name, FAIL, _one_line(str(exc)))
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raises is its failure
        return Outcome(kind, name, check.name, FAIL,
                       _one_line(f"{type(exc).__name__}: {exc}"))
    return Outcome(kind, name, check.name, PASS)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def restored(*registries: Registry[Any]) -> Iterator[None]:
    """Whatever a ``with`` block registers in ``registries`` (e.g. by importing a plugin module
    in a test) is gone after it: each registry's table is put back as it was on entry, with its
    built-in and entry-point plugins loaded first."""
    saved = []
    for registry in registries:
        registry.load()
        saved.append((registry, dict(registry._entries), dict(registry._prefixes)))  # noqa: SLF001
    try:
        yield
    finally:
        for registry, entries, prefixes in saved:
            registry._entries.clear()  # noqa: SLF001 - the registry's own tables
            registry._entries.update(entries)  # noqa: SLF001
            registry._prefixes.clear()  # noqa: SLF001
            registry._prefixes.update(prefixes)  # noqa: SLF001


@contextlib.contextmanager
def registered(registry: Registry[Any], name: str, builder: Callable[..., Any], *,
               description: str | None = None, **overrides: Any) -> Iterator[str]:
    """``builder`` registered as ``name`` in ``registry`` for the duration of a ``with`` block;
    yields ``name`` (``description``: default the builder's docstring, as for any plugin). The
    registry is restored on exit (:func:`restored`), so a test's throwaway plugin never leaks
    into later tests; nested blocks restore in turn. A name that is already registered is a
    DuplicatePluginError, as at import time."""
    with restored(registry):
        registry.register(name, description=description, **overrides)(builder)
        yield name


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a block (restored after): the kit's tensors are tiny, and one
    thread is several times faster than two on them (no hand-offs), far faster on a busy CPU."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
