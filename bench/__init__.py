"""bench: a harness that compares defenses against adversarial examples side by side."""

from __future__ import annotations

__version__ = "0.1.0"
