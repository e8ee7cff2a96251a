"""The version of bench (the same as in pyproject.toml), recorded in every result row."""

__version__ = "0.1.0"
