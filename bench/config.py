"""Run configuration, option parsing at the boundary, and the harness's directories.

Precedence of settings: command line, then a config file (``--config run.json``), then a variant's
registered defaults, then the dataclass defaults below.
"""

from __future__ import annotations

import difflib
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
ENV_EXECUTOR = "BENCH_EXECUTOR"  # the executor when neither the command line nor --config sets one
EXECUTORS = ("local", "ray")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "tf32", "bf16")  # see bench.accel.precision_scope


def check_precision(value: Any, option: str) -> str:
    """``value`` as one of :data:`PRECISIONS`, else a one-line ConfigError naming ``option``."""
    if value not in PRECISIONS:
        raise ConfigError(f"{option} {value!r}: use one of {', '.join(PRECISIONS)} (fp32 is "
                          f"strict float32, tf32 allows TF32 on CUDA, bf16 autocasts to "
                          f"bfloat16).")
    return str(value)


def parse_fraction(text: str | float, what: str = "Epsilon") -> float:
    """A number on the [0,1] pixel scale written ``0.2``, ``8/255`` or ``0`` (eps, step sizes).

    Raises:
        ConfigError: not a number, negative, or above 1.
    """
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise ConfigError(f"Bad {what.lower()} {text!r}: write a number on the [0,1] pixel scale "
                          f"such as 0.03 or 8/255.")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip()
        try:
            value = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"Bad {what.lower()} {text!r}: write a number on the [0,1] pixel scale such as "
                f"0.03 or 8/255."
            ) from None
    if not (0.0 <= value <= 1.0) or value != value:
        raise ConfigError(
            f"{what} {text!r} is outside [0, 1]: it is on the [0,1] pixel scale "
            f"(e.g. 0.3 for MNIST, 8/255 for CIFAR-10)."
        )
    return value


def parse_eps(text: str | float) -> float:
    """Parse an L-inf radius on the [0,1] pixel scale: ``0.2``, ``8/255`` or ``0``.

    Raises:
        ConfigError: not a number, negative, or above 1.
    """
    return parse_fraction(text, "Epsilon")


def parse_alpha(text: str | float) -> float:
    """Parse a step size: like :func:`parse_eps` (``2/255`` works) but strictly positive."""
    value = parse_fraction(text, "Step size --alpha")
    if value <= 0:
        raise ConfigError(f"--alpha {text!r} must be > 0: pass a step size such as 2/255.")
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


OPTION_KEY = re.compile(r"^([a-z0-9][a-z0-9_:-]*\.)?[a-z_][a-z0-9_]*$")


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` or ``NAME.key=value`` pairs (``NAME`` scopes the option to one
    plugin); values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not OPTION_KEY.match(key):
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


ENV_STREAM_BYTES = "BENCH_STREAM_BYTES"
STREAM_BYTES = 2 * 2**30


def stream_bytes() -> int:
    """Above this many bytes (float32) an evaluated slice and its adversarial sets live on disk
    and are read per batch (``$BENCH_STREAM_BYTES``, default 2 GiB); below, in memory."""
    env = os.environ.get(ENV_STREAM_BYTES)
    try:
        return int(env) if env else STREAM_BYTES
    except ValueError:
        raise ConfigError(f"${ENV_STREAM_BYTES}={env!r} is not a number of bytes; use e.g. "
                          f"2147483648 or unset it.") from None


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


def check_output_path(path: str | os.PathLike[str], what: str, folder: bool = False) -> Path:
    """``path`` (a file, or a folder when ``folder``) where the harness may write, as a resolved
    Path; a one-line ConfigError otherwise (it, or a folder above it, is a regular file; it is a
    folder where a file is expected; no permission to create it)."""
    p = Path(path).expanduser().resolve()
    if p.exists() and p.is_dir() != folder:
        kind = "folder" if p.is_dir() else "file"
        want = "a folder" if folder else "a file path"
        raise ConfigError(f"{what} {p} is a {kind}: pass {want}.")
    parent = p if folder else p.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {p}: {probe} is a file, not a folder; pass a path in a "
                          f"folder.")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"{what} {p}: no permission to write in {probe}; pass another path.")
    return p


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = split_list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip()
                                                        for v in value):
        raise ConfigError(f"{name} must be a list of names (or a comma list), got {value!r}.")
    return tuple(v.strip() for v in value)


def _int(name: str, value: Any, low: int | None, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"{name} must be an integer{' or null' if optional else ''}, got "
                          f"{value!r}.")
    if low is not None and value < low:
        raise ConfigError(f"{name} {int(value)} must be >= {low}.")
    return int(value)


def _options(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object of options such as {{\"epochs\": 5}}, got "
                          f"{value!r}.")
    for key in value:
        if not isinstance(key, str) or not OPTION_KEY.match(key):
            raise ConfigError(f"{name}: bad option name {key!r}; write key or NAME.key, e.g. "
                              f"epochs or lgd.epochs.")
    return dict(value)


@dataclass(frozen=True)
class RunConfig:
    """The fully resolved configuration of one ``bench run`` grid.

    Every list is a grid axis; the runner crosses them. ``threats`` empty means the default
    threat models (oblivious and whitebox; transfer only when asked for). ``source_model`` is
    the transfer threat's source (None: the dataset's first model other than the target);
    ``eot`` the draws a whitebox gradient attack averages through a randomized defense;
    ``eval_draws`` the forward passes per image when a randomized defense is evaluated (an image
    counts as correct only when every draw classifies it correctly). Every field is checked and
    normalized when the object is made, whatever its source (command line, config file, code):
    lists may be given as comma strings, eps and alpha as fractions (``8/255``).
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
    batch_size: int | str = 250  # or "auto": see bench.accel.probe_batch_size
    source_model: str | None = None
    eot: int = 20
    eval_draws: int = 10
    device: str = "auto"
    download: bool = False
    data_root: str | None = None
    results: str | None = None
    defense_opts: dict[str, Any] = field(default_factory=dict)
    attack_opts: dict[str, Any] = field(default_factory=dict)
    model_opts: dict[str, Any] = field(default_factory=dict)
    # Numeric precision of defenses' training and of attacks (fp32, tf32 or bf16; evaluation is
    # always fp32): part of the weight key, and of the cell's configuration, when not fp32.
    train_precision: str = "fp32"
    attack_precision: str = "fp32"
    # How the numbers are computed on a device, recorded in each row's metadata["execution"]
    # but, like the device itself, not in its hash: channels-last weights and batches, and
    # CUDA's deterministic algorithms (see bench.accel).
    channels_last: bool = False
    deterministic: bool = True
    # How the grid runs, never what it computes (no cell's configuration or hash holds these):
    # ``local`` (one cell after another in this process) or ``ray`` (see bench.executors).
    executor: str = "local"
    ray_address: str | None = None
    ray_cpus: int = 1
    # Plugin files or folders to import (bench.plugin_files); in no cell's hash, as executor.
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("datasets", "models", "defenses", "attacks", "threats"):
            put(self, name, _names(name, getattr(self, name)))
        eps = self.eps
        if isinstance(eps, str):
            eps = split_list(eps)
        elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
            eps = (eps,)
        if not isinstance(eps, (list, tuple)):
            raise ConfigError(f"eps must be a list of radii such as [0.1, \"8/255\"], got "
                              f"{eps!r}.")
        put(self, "eps", tuple(parse_eps(e) for e in eps))  # floats, never strings
        n = _int("n", self.n, None, optional=True)
        if n is not None and n <= 0:
            raise ConfigError(f"--n {n} is not a positive number of test images: use --n 100, "
                              f"or leave it out to evaluate the whole test split.")
        fit = _int("fit_images", self.fit_images, None, optional=True)
        if fit is not None and fit <= 0:
            raise ConfigError(f"--fit-images {fit} must be a positive number of training "
                              f"images.")
        batch: int | str | None = self.batch_size
        if isinstance(batch, str) and batch.strip().lower() == "auto":
            batch = "auto"
        else:
            if isinstance(batch, str) and batch.strip().isdigit():
                batch = int(batch)
            if isinstance(batch, str):
                raise ConfigError(f"--batch-size {batch!r}: pass a positive integer or auto.")
            batch = _int("batch_size", batch, None, optional=False)
            if batch is not None and batch <= 0:
                raise ConfigError(f"--batch-size {batch} must be positive, or auto.")
        put(self, "n", n)
        put(self, "fit_images", fit)
        put(self, "batch_size", batch)
        put(self, "seed", _int("seed", self.seed, 0, optional=False))
        put(self, "eot", _int("eot", self.eot, 1, optional=False))
        put(self, "eval_draws", _int("eval_draws", self.eval_draws, 1, optional=False))
        if self.source_model is not None and not (isinstance(self.source_model, str)
                                                  and self.source_model.strip()):
            raise ConfigError(f"source_model must be a model name, got {self.source_model!r}.")
        if self.targeted not in (None, "random", "least-likely"):
            raise ConfigError(f"--targeted {self.targeted!r}: use 'random' or 'least-likely'.")
        if self.alpha is not None:
            put(self, "alpha", parse_alpha(self.alpha))
        for name in ("download", "channels_last", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got "
                                  f"{getattr(self, name)!r}.")
        for name in ("train_precision", "attack_precision"):
            put(self, name, check_precision(getattr(self, name), "--" + name.replace("_", "-")))
        for name in ("device", "data_root", "results"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "device")):
                raise ConfigError(f"{name} must be a string, got {value!r}.")
        for name in ("defense_opts", "attack_opts", "model_opts"):
            put(self, name, _options(name, getattr(self, name)))
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor {self.executor!r} (or ${ENV_EXECUTOR}): use one of "
                              f"{', '.join(EXECUTORS)}.")
        if self.ray_address is not None and not (isinstance(self.ray_address, str)
                                                 and self.ray_address.strip()):
            raise ConfigError(f"ray_address must be an address such as 'auto' or "
                              f"'ray://head:10001', got {self.ray_address!r}.")
        cpus = _int("ray_cpus", self.ray_cpus, None, optional=False)
        if cpus is not None and cpus <= 0:
            raise ConfigError(f"--ray-cpus {cpus} must be a positive number of CPUs per task.")
        put(self, "ray_cpus", cpus)
        paths = self.plugins.split(os.pathsep) if isinstance(self.plugins, str) else self.plugins
        put(self, "plugins", tuple(dict.fromkeys(_names("plugins", paths))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The fields a JSON config file sets (a one-line ConfigError for anything else)."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"Cannot read config file {path}: {why}. Pass a JSON object of "
                              f"RunConfig fields.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"Config file {path} holds a JSON {type(raw).__name__}, not an "
                              f"object: write {{\"attacks\": [\"fgsm\"], ...}}.")
        names = [f.name for f in fields(RunConfig)]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            hints = [h for k in unknown for h in difflib.get_close_matches(k, names, n=1)]
            hint = f" Did you mean {', '.join(map(repr, hints))}?" if hints else ""
            raise ConfigError(f"Unknown keys {unknown} in {path}.{hint} Known: {names}.")
        return raw

    @classmethod
    def resolve(cls, given: dict[str, Any], path: str | os.PathLike[str] | None = None,
                defaults: dict[str, Any] | None = None) -> RunConfig:
        """The configuration from ``given`` (only the fields set on the command line), then the
        config file at ``path``, then ``defaults`` (a command's own), then the dataclass
        defaults (variant defaults apply later, when plugins are built). Option dicts merge key
        by key, the command line winning."""
        file_values = cls.read_file(path) if path else {}
        env = {"executor": os.environ[ENV_EXECUTOR]} if os.environ.get(ENV_EXECUTOR) else {}
        if path and isinstance(file_values.get("plugins"), list):  # relative to the file
            file_values["plugins"] = [str(Path(path).parent / p) if isinstance(p, str) else p
                                      for p in file_values["plugins"]]
        merged = {**env, **(defaults or {}), **file_values, **given}
        if isinstance(file_values.get("plugins"), list) and "plugins" in given:  # both load
            merged["plugins"] = [*file_values["plugins"], *given["plugins"]]
        for name in ("defense_opts", "attack_opts", "model_opts"):
            if isinstance(file_values.get(name), dict) and name in given:
                merged[name] = {**file_values[name], **given[name]}
        try:
            return cls(**merged)
        except ConfigError as exc:
            if not path:
                raise
            raise ConfigError(f"{exc} (config file {path}, or the command line)") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> RunConfig:
        """Read a JSON config file; ``overrides`` that are not None (from the command line) win
        over it."""
        return cls.resolve({k: v for k, v in overrides.items() if v is not None}, path)
