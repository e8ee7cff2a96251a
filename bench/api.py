"""The Python API: evaluate one's own model (and defense) from a script or a notebook.

::

    import bench
    result = bench.evaluate(model, dataset="mnist", eps=0.2, attack="adaptive", n=1000)
    print(result)             # the leaderboard of these cells, as `bench run` prints it

``model`` is any ``nn.Module`` that takes [0,1] images (N x C x H x W) and returns logits, or the
name of a registered classifier. It takes part in the run exactly as a registered pretrained
classifier would: the grid is a :class:`~bench.config.RunConfig` run by
:func:`~bench.executors.run_grid`, so the cells are the ones ``bench run`` stores for the same
configuration (the same hashes when ``model`` and the defenses are registered names). A module's
identity in the store is a digest of its weights (``classifier`` in each cell's configuration),
and a preprocessing module given as ``defense`` is identified by a digest of its weights too.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.cache import tensors_digest
from bench.config import RunConfig, format_eps
from bench.data import get_dataset
from bench.defense import Defense
from bench.errors import ConfigError
from bench.models.zoo import Classifier
from bench.plugin_files import env_paths, load_plugins
from bench.registry import DEFENSES, MODELS, NAME_RE, Registry
from bench.runtime import resolve_device
from bench.store import Store, open_store


class ModuleClassifier(Classifier):
    """A user's ``nn.Module`` as a classifier of the harness: [0,1] images in, logits out (its
    own normalization inside), weights as given (``pretrained``: never trained or cached)."""

    pretrained = True

    def __init__(self, net: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.net, "forward_features") and hasattr(self.net, "forward_head"):
            return self.net.forward_features(x)
        raise ConfigError(f"{type(self.net).__name__} has no forward_features/forward_head, which "
                          f"a feature-guided defense (fgd) trains against: define both (timm's "
                          f"convention: feature maps, then logits), or pick another defense.")

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(feats)


class ModuleDefense(Defense):
    """A user's preprocessing ``nn.Module`` (images in, images of the same shape in [0,1] out) as
    a differentiable defense; ``weights`` (the digest of its state) identifies it in every cell."""

    def __init__(self, net: nn.Module, input_shape: Sequence[int] = (1, 28, 28),
                 num_classes: int = 10, weights: str = "") -> None:
        super().__init__(input_shape, num_classes)
        self.net = net
        self.weights = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of the module's class and state (parameters and buffers): its identity."""
    cls = type(module)
    return tensors_digest(module.state_dict(), {"class": f"{cls.__module__}.{cls.__qualname__}"})


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", text).lower())
    return s.strip("-_") or "model"


def _device_of(module: nn.Module) -> torch.device | None:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return None


def _check_device(module: nn.Module, what: str, device: str | None) -> str:
    """The run's device: where ``module`` lives (a one-line error when it differs from an
    explicit ``device``, or when the module is split over devices)."""
    places = {t.device for t in (*module.parameters(), *module.buffers())}
    if len(places) > 1:
        where = ", ".join(sorted(map(str, places)))
        raise ConfigError(f"{what} has tensors on several devices ({where}): move it to one "
                          f"with .to(device).")
    here = _device_of(module)
    if device is None:
        return str(here) if here is not None else "auto"
    want = resolve_device(device)
    if here is not None and (here.type, here.index or 0) != (want.type, want.index or 0):
        raise ConfigError(f"{what} is on {here} but the run is on {want}: call "
                          f"model.to('{want}') first, or pass device='{here}'.")
    return device


def _check_classifier(module: nn.Module, name: str, dataset: str, data_root: str | None,
                      device: str) -> None:
    """Run ``module`` once on four test images of ``dataset``: it must return finite logits
    N x num_classes (a one-line ConfigError saying what it returned otherwise)."""
    ds = get_dataset(dataset, root=data_root)
    info = ds.info
    x, _ = ds.tensors("test", 4)
    shape = " x ".join(map(str, x.shape))
    dev = resolve_device(device)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x.to(dev))
    except Exception as exc:  # noqa: BLE001 - any failure is the model's, reported in one line
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"Model {name} failed on {info.name} test images ({shape}, pixels in "
                          f"[0,1]): {type(exc).__name__}: {first}. It must take N x "
                          f"{' x '.join(map(str, info.input_shape))} images in [0,1] and return "
                          f"logits N x {info.num_classes}.") from None
    finally:
        module.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), info.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"Model {name} returned {got} for {len(x)} {info.name} images: it must "
                          f"return logits of shape ({len(x)}, {info.num_classes}).")
    if not torch.isfinite(out).all():
        raise ConfigError(f"Model {name} returned NaN or infinite logits on {info.name} test "
                          f"images; nothing was evaluated. Check its weights and inputs.")


@contextlib.contextmanager
def _registered(registry: Registry[Any], name: str, builder: Any, **overrides: Any,
                ) -> Iterator[str]:
    """``builder`` registered as ``name`` for a ``with`` block (removed afterwards); a name a
    registered plugin already holds is a one-line error."""
    registry.load()
    if name in registry._entries:  # noqa: SLF001 - the registry's own table
        raise ConfigError(f"The {registry.kind} name '{name}' is taken by {registry.where(name)}: "
                          f"pass another name=.")
    registry.register(name, description=getattr(builder, "__doc__", None) or "", **overrides)(
        builder)
    try:
        yield name
    finally:
        registry._entries.pop(name, None)  # noqa: SLF001


class Evaluation:
    """What :func:`evaluate` returns: the cells of the run, as stored.

    Attributes:
        cells: the stored cells (one per attack x threat x eps x defense), a DataFrame as
            ``Store.frame`` returns it (``clean_correct`` and ``robust_correct``: one 0/1 per
            image, in slice order; ``config``: each cell's configuration; ``config_hash``).
        table: the wide leaderboard of these cells (what ``bench run`` prints).
        headline: eps -> the worst case (%, images correct clean and under every attack and
            threat model at that eps) of the first defense evaluated (the model alone when no
            defense was given).
        headlines: defense -> (eps -> worst case in %), every defense of the run.
        per_image: one row per test image; columns (defense, ``clean`` or the cell's column
            label as the leaderboard shows it, ``ATTACK/THREAT@EPS``) of 0/1 flags: correct
            clean, robust under that cell.
        store: the store's path.
    """

    def __init__(self, frame: pd.DataFrame, defenses: list[str], store: Path) -> None:
        from bench.report import identify, leaderboard
        from bench.report.headline import headlines, records
        from bench.session import baseline_name

        self.cells = frame
        self.store = store
        self.table = leaderboard(frame, baseline=baseline_name())
        cells = records(identify(frame))  # labelled as the leaderboard labels them
        defense_of = {c["_row"]: c["defense"] for c in cells}
        self.headlines: dict[str, dict[float, float]] = {}
        for (row, eps), head in sorted(headlines(cells).items(), key=lambda kv: kv[0][1]):
            self.headlines.setdefault(defense_of[row], {})[eps] = round(100 * head["acc"], 2)
        columns: dict[tuple[str, str], np.ndarray] = {}
        for c in cells:
            columns.setdefault((c["defense"], "clean"), np.asarray(c["clean_correct"], np.uint8))
            columns[(c["defense"], c["_label"])] = np.asarray(c["robust_correct"], np.uint8)
        self.per_image = pd.DataFrame(columns)
        self.per_image.index.name = "image"
        self.headline = self.headlines.get(defenses[0], {}) if defenses else {}

    def __str__(self) -> str:
        from bench.report import render
        from bench.session import baseline_name

        return render(self.cells, "md", baseline=baseline_name())

    def __repr__(self) -> str:
        heads = ", ".join(f"{format_eps(e)}: {v:.1f}%" for e, v in self.headline.items())
        return f"Evaluation({len(self.cells)} cells, worst case {{{heads}}}, store {self.store})"


def _names(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float, nn.Module)):
        return [value]
    return list(value)


def evaluate(model: nn.Module | str, dataset: str, *, attack: str | Sequence[str],
             eps: float | str | Sequence[float | str] | None = None, n: int | None = None,
             threat: str | Sequence[str] | None = None,
             defense: str | nn.Module | Sequence[str | nn.Module] | None = None,
             name: str | None = None, store: str | Path | Store | None = None,
             device: str | None = None, plugins: Sequence[str] = (),
             **options: Any) -> Evaluation:
    """Attack ``model`` on ``dataset`` and return the cells, as ``bench run`` stores them.

    Args:
        model: an ``nn.Module`` ([0,1] images N x C x H x W in, logits out) or a registered
            classifier's name.
        dataset: a registered dataset (``mnist``, ``cifar10``, ``digits``, ...).
        attack: attack name(s), e.g. ``"adaptive"`` (the adaptive suite) or ``"pgd100"``.
        eps: L-inf radius or radii (``0.2``, ``"8/255"``); default the dataset's.
        n: the first n test images (default all).
        threat: threat model(s); default oblivious and whitebox (a suite runs as whitebox).
        defense: defense(s) in front of ``model``: registered names, or ``nn.Module``
            preprocessors (images in, images of the same shape in [0,1] out). The undefended
            model is always evaluated too, as in ``bench run``.
        name: the model's label in the store (default: its class name, lower case).
        store: the SQLite store the cells are written to (default: a temporary one, removed
            when the process exits); a stored cell is reused, as by ``bench run``.
        device: where to run (default: where the module's weights are).
        plugins: plugin files or folders to import first (as ``--plugins``).
        **options: any other :class:`~bench.config.RunConfig` field (``seed``, ``batch_size``,
            ``data_root``, ``attack_opts``, ``eot``, ``executor``, ...).

    Raises:
        ConfigError (one line, as the CLI prints it): a model that fails on the dataset's images
            or returns logits of the wrong shape or non-finite ones, a model on another device,
            a name that is taken, and every error ``bench run`` reports.
    """
    load_plugins([*env_paths(), *plugins])
    for key in ("models", "defenses", "datasets", "results"):
        if key in options:
            raise ConfigError(f"evaluate() takes model=, defense=, dataset= and store=, not "
                              f"{key}=.")
    data_root = options.get("data_root")
    with contextlib.ExitStack() as stack:
        if isinstance(model, nn.Module):
            label = name or _slug(type(model).__name__)
            if not NAME_RE.match(label):
                raise ConfigError(f"name={label!r}: use lower case letters, digits, - and _.")
            device = _check_device(model, f"Model {label}", device)
            _check_classifier(model, label, dataset, data_root, device)
            was = model.training
            stack.callback(model.train, was)

            def build_model(input_shape: Sequence[int], num_classes: int) -> ModuleClassifier:
                return ModuleClassifier(model, input_shape, num_classes)

            build_model.__doc__ = f"{type(model).__name__} given to bench.evaluate()."
            model_name = stack.enter_context(_registered(MODELS, label, build_model))
        elif isinstance(model, str):
            model_name = model
        else:
            raise ConfigError(f"model must be an nn.Module or a registered model name, got "
                              f"{type(model).__name__}.")
        defenses = []
        for i, d in enumerate(_names(defense)):
            if isinstance(d, nn.Module):
                device = _check_device(d, f"Defense {type(d).__name__}", device)
                defenses.append(stack.enter_context(_module_defense(d, i)))
            elif isinstance(d, str):
                defenses.append(d)
            else:
                raise ConfigError(f"defense must be a registered name or an nn.Module, got "
                                  f"{type(d).__name__}.")
        path = _store_path(store)
        cfg = RunConfig(datasets=(dataset,), models=(model_name,),
                        defenses=tuple(defenses) or ("none",), attacks=tuple(_names(attack)),
                        threats=tuple(_names(threat)), eps=tuple(_names(eps)), n=n,
                        device=device or "auto", results=str(path), plugins=tuple(plugins),
                        **options)
        from bench.executors import run_grid
        from bench.session import baseline_name

        opened = store if isinstance(store, Store) else open_store(path)
        hashes = run_grid(cfg, opened)
        evaluated = [*dict.fromkeys([*defenses, baseline_name()])]
        return Evaluation(opened.frame(hashes), evaluated, Path(opened.path))


@contextlib.contextmanager
def _module_defense(module: nn.Module, index: int) -> Iterator[str]:
    digest = weights_digest(module)
    label = f"{_slug(type(module).__name__)}-{digest[:8]}"
    was = module.training

    def build_defense(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                      weights: str = digest) -> ModuleDefense:
        return ModuleDefense(module, input_shape, num_classes, weights)

    build_defense.kind = "preprocessor"  # type: ignore[attr-defined]
    build_defense.__doc__ = f"{type(module).__name__} given to bench.evaluate() (defense {index})."
    try:
        with _registered(DEFENSES, label, build_defense) as registered_name:
            yield registered_name
    finally:
        module.train(was)


def _store_path(store: str | Path | Store | None) -> Path:
    if isinstance(store, Store):
        return Path(store.path)
    if store is not None:
        return Path(store).expanduser().resolve()
    folder = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder / "bench.sqlite"
