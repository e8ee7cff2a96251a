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
def registered(registry: Registry[Any], name: str, builder: Callable[..., Any], *,
               description: str = "test plugin", **overrides: Any) -> Iterator[str]:
    """``builder`` registered as ``name`` in ``registry`` for the duration of a ``with`` block;
    yields ``name``. The built-in and entry-point plugins are loaded first and the registry's
    table is restored on exit, so a test's throwaway plugin never leaks into later tests (nested
    blocks restore in turn). A name that is already registered is a DuplicatePluginError, as at
    import time."""
    registry.load()
    saved = dict(registry._entries)  # noqa: SLF001 - the registry's own table, restored below
    registry.register(name, description=description, **overrides)(builder)
    try:
        yield name
    finally:
        registry._entries.clear()  # noqa: SLF001
        registry._entries.update(saved)  # noqa: SLF001
