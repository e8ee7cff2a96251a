"""bench: a harness that compares defenses against adversarial examples side by side."""

from __future__ import annotations

from bench.version import __version__

__all__ = ["Evaluation", "__version__", "evaluate"]


def __getattr__(name: str) -> object:
    """``bench.evaluate`` (and ``bench.Evaluation``), imported on first use: ``import bench``
    stays cheap (no torch) for the command line's error paths."""
    if name in ("evaluate", "Evaluation"):
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
