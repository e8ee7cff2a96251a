"""Typed errors. Every message says the problem, the offending value and the fix, on one line."""

from __future__ import annotations


class BenchError(Exception):
    """Base class of every error the harness reports to a user as a one-line message."""


class ConfigError(BenchError, ValueError):
    """A bad option value (eps out of range, n <= 0, malformed list...)."""


class UnknownPluginError(BenchError, KeyError):
    """A registry name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicatePluginError(BenchError):
    """Two plugins registered under one name."""


class PluginImportError(BenchError, ImportError):
    """A third-party plugin (entry point) failed to import."""


class DataNotFoundError(BenchError, FileNotFoundError):
    """Dataset files are missing under the data root."""


class DataCorruptError(BenchError):
    """A dataset file is present but unreadable: truncated, a wrong checksum or bad content (the
    message names the file)."""


class CheckpointError(BenchError):
    """A cached weight file is corrupt or does not match what is expected."""


class AttackValidationError(BenchError):
    """An attack returned an adversarial batch outside the threat model (never recorded)."""


class NonFiniteError(BenchError, ArithmeticError):
    """A model, defense or attack produced NaN or infinite values."""


class PluginContractError(BenchError):
    """A plugin broke its contract (e.g. a preprocessor returned the wrong shape or range)."""
