"""Run configuration, option parsing at the boundary, and the harness's directories.

Precedence of settings: command line, then a config file (``--config run.json``), then a variant's
registered defaults, then the dataclass defaults below.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.errors import ConfigError

ENV_DATA_ROOT = "BENCH_DATA_ROOT"
ENV_CACHE_DIR = "BENCH_CACHE_DIR"
ENV_RESULTS = "BENCH_RESULTS"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def parse_eps(text: str | float) -> float:
    """Parse an L-inf radius on the [0,1] pixel scale: ``0.2``, ``8/255`` or ``0``.

    Raises:
        ConfigError: not a number, negative, or above 1.
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip()
        try:
            value = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"Bad epsilon {text!r}: write a number on the [0,1] pixel scale such as 0.03 "
                f"or 8/255."
            ) from None
    if not (0.0 <= value <= 1.0) or value != value:
        raise ConfigError(
            f"Epsilon {text!r} is outside [0, 1]: eps is an L-inf radius on the [0,1] pixel scale "
            f"(e.g. 0.3 for MNIST, 8/255 for CIFAR-10)."
        )
    return value


def format_eps(eps: float) -> str:
    """Show ``eps`` as a short decimal when one is exact (``0.2``), else as ``k/255`` when it is
    one (``8/255``), else as a 6-digit decimal."""
    short = f"{eps:g}"
    if float(short) == eps:
        return short
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return short


def split_list(text: str | None) -> list[str]:
    """Split a comma list (``"none,lgd"``) into stripped non-empty items."""
    if text is None:
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` or ``NAME.key=value`` pairs (``NAME`` scopes the option to one
    plugin); values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^([a-z0-9][a-z0-9_:-]*\.)?[a-z_][a-z0-9_]*$", key):
            raise ConfigError(f"Bad option {item!r}: write key=value or NAME.key=value, e.g. "
                              f"epochs=5 or lgd.epochs=5.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def int_option(plugin: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high`` (no upper bound when ``high`` is None), else a one-line
    ConfigError naming the option and how to pass it. Integral floats (``4.0``) are accepted,
    booleans are not."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and value == int(value)
          and low <= value and (high is None or value <= high))
    if not ok:
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{plugin} {name}={value!r} is not an integer {bounds}: pass e.g. "
                          f"--defense-opt {plugin}.{name}={low if high is None else high}.")
    return int(value)


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--data-root``, else ``$BENCH_DATA_ROOT``, else ``~/.cache/bench/data``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_DATA_ROOT)
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "bench" / "data"


def cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``~/.cache/bench``: trained weights and attack sets live here."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "bench"


def results_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--results``, else ``$BENCH_RESULTS``, else ``results/bench.sqlite`` in the project."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_RESULTS)
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "results" / "bench.sqlite"


@dataclass(frozen=True)
class RunConfig:
    """The fully resolved configuration of one ``bench run`` grid.

    Every list is a grid axis; the runner crosses them. ``threats`` empty means: every threat
    model that applies to each defense (both for preprocessors).
    """

    datasets: tuple[str, ...] = ("digits",)
    models: tuple[str, ...] = ()
    defenses: tuple[str, ...] = ("none",)
    attacks: tuple[str, ...] = ()
    threats: tuple[str, ...] = ()
    eps: tuple[float, ...] = ()
    n: int | None = None
    fit_images: int | None = None
    seed: int = 0
    alpha: float | None = None
    targeted: str | None = None
    batch_size: int = 250
    device: str = "auto"
    download: bool = False
    data_root: str | None = None
    results: str | None = None
    defense_opts: dict[str, Any] = field(default_factory=dict)
    attack_opts: dict[str, Any] = field(default_factory=dict)
    model_opts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n is not None and self.n <= 0:
            raise ConfigError(f"--n {self.n} is not a positive number of test images: use --n 100, "
                              f"or leave it out to evaluate the whole test split.")
        if self.fit_images is not None and self.fit_images <= 0:
            raise ConfigError(f"--fit-images {self.fit_images} must be a positive number of "
                              f"training images.")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size {self.batch_size} must be positive.")
        if self.targeted not in (None, "random", "least-likely"):
            raise ConfigError(f"--targeted {self.targeted!r}: use 'random' or 'least-likely'.")
        if self.alpha is not None and not (0 < self.alpha <= 1):
            raise ConfigError(f"--alpha {self.alpha} must be in (0, 1] on the pixel scale.")
        # A config file may write eps as "8/255": store the parsed float, never the string.
        object.__setattr__(self, "eps", tuple(parse_eps(e) for e in self.eps))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> RunConfig:
        """Read a JSON config file; ``overrides`` (from the command line) win over it."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"Cannot read config file {path}: {exc}. Pass a JSON object."
            ) from exc
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"Unknown keys {sorted(unknown)} in {path}; known: {sorted(names)}.")
        merged = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        for key in ("datasets", "models", "defenses", "attacks", "threats", "eps"):
            if key in merged and isinstance(merged[key], list):
                merged[key] = tuple(merged[key])
        return cls(**merged)
