"""Helpers of the attack tests: accuracy, and a small classifier trained to 100% (the contract
kit's own, :mod:`bench.testing.tiny`)."""

from __future__ import annotations

from bench.testing.tiny import accuracy, train_logistic

__all__ = ["accuracy", "train_logistic"]
