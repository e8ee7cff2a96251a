"""Classifiers. Inputs are always [0,1] images; normalization lives inside the model.

Every classifier follows timm's convention: ``forward_features(x)`` returns the topmost
convolutional feature maps (before global pooling; what FGD-style losses compare) and
``forward_head(features)`` the logits. Models without pretrained weights are trained by the
harness with their ``recipe`` and cached by a hash of everything that determined the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.cache import Cache, load_error_summary, stable_hash
from bench.config import cache_dir
from bench.data import BenchDataset
from bench.errors import CheckpointError, ConfigError
from bench.registry import MODELS, register_model
from bench.train import accuracy, rng_isolated, train_classifier

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    """Base: [0,1] images in, logits out, normalization inside.

    Args:
        input_shape: C x H x W of the inputs.
        num_classes: number of logits.
        mean, std: per-channel normalization applied first (defaults 0.5 / 0.5).
    """

    recipe: ClassVar[dict[str, Any]] = {"epochs": 5, "lr": 1e-3, "batch_size": 128}
    pretrained: bool = False

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        c = input_shape[0]
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean or [0.5] * c).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std or [0.5] * c).view(1, c, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Topmost convolutional feature maps for [0,1] images ``x``."""
        return self.features(self.normalize(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N x num_classes) for images ``x`` (N x C x H x W in [0,1])."""
        return self.forward_head(self.forward_features(x))


def _flat_size(module: nn.Module, shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *shape)).numel())


@register_model("cnn")
class PaperCNN(Classifier):
    """The small CNN of the perceptual-loss AE paper: conv5x5 1->20, pool, conv5x5 20->50, pool,
    fc 800->500, fc 500->10 (99.5% on MNIST in the paper)."""

    recipe = {"epochs": 4, "lr": 1e-3, "batch_size": 128}

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes)
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = _flat_size(self.features, input_shape)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(),
                                  nn.Linear(500, num_classes))


@register_model("cnn3x3")
class CNN3x3(Classifier):
    """A different 28x28 architecture (the second model of HGD-style training sets): conv3x3 16,
    conv3x3 32, pool, conv3x3 32, pool, fc 128, fc 10."""

    recipe = {"epochs": 4, "lr": 1e-3, "batch_size": 128}

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes)
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = _flat_size(self.features, input_shape)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet18")
class CifarResNet18(Classifier):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool, stages 64-128-256-512) for 32x32 inputs."""

    recipe = {"epochs": 30, "lr": 1e-3, "batch_size": 128}

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 width: int = 64) -> None:
        super().__init__(input_shape, num_classes, [0.4914, 0.4822, 0.4465][: input_shape[0]],
                         [0.2471, 0.2435, 0.2616][: input_shape[0]])
        w = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], w[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(w[0]), nn.ReLU()]
        cin = w[0]
        for i, cout in enumerate(w):
            for j in range(2):
                layers.append(_BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))


@register_model("vgg11")
class CifarVGG11(Classifier):
    """CIFAR-style VGG-11 with batch norm (the second 32x32 architecture)."""

    recipe = {"epochs": 30, "lr": 1e-3, "batch_size": 128}
    cfg = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__(input_shape, num_classes, [0.4914, 0.4822, 0.4465][: input_shape[0]],
                         [0.2471, 0.2435, 0.2616][: input_shape[0]])
        layers: list[nn.Module] = []
        cin = input_shape[0]
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))


def _per_channel(values: Sequence[float] | None, channels: int) -> list[float]:
    """timm's RGB mean/std for ``channels`` inputs (their average for grey images)."""
    values = list(values or (0.5,) * 3)
    return values if len(values) == channels else [sum(values) / len(values)] * channels


def timm_hub_problem() -> str | None:
    """Why timm cannot reach the Hugging Face hub (or its local cache) for pretrained weights, as
    the fix to apply; None when it can. timm swallows the ImportError and later reports "package
    not installed" even when huggingface_hub is installed but too new for it (timm < 1.0.21, e.g.
    the 1.0.9 that robustbench 1.1.1 pins, imports names that huggingface_hub 2 removed)."""
    import timm
    from timm.models import _hub

    if getattr(_hub, "_has_hf_hub", True):
        return None
    try:
        import huggingface_hub
    except ImportError:
        return "huggingface_hub is not installed: pip install huggingface_hub"
    return (f"timm {timm.__version__} cannot import huggingface_hub "
            f"{huggingface_hub.__version__} (timm before 1.0.21 needs huggingface_hub<2): "
            f"pip install 'huggingface_hub<2', or upgrade timm")


class TimmClassifier(Classifier):
    """A timm model with its own normalization inside; ``forward_features`` is timm's."""

    recipe = {"epochs": 30, "lr": 1e-3, "batch_size": 64}

    def __init__(self, arch: str, input_shape: Sequence[int] = (3, 224, 224),
                 num_classes: int = 1000, pretrained: bool = True,
                 weights: str | None = None) -> None:
        import timm

        overlay = None
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"Weights file {path} for timm:{arch} does not exist. Pass weights=PATH of a "
                    f"saved state dict (.safetensors, .pth), or pretrained=false to train it here."
                )
            overlay = {"file": str(path)}
        if pretrained and not weights:
            problem = timm_hub_problem()
            if problem:
                raise CheckpointError(f"Pretrained weights for timm:{arch} cannot be fetched: "
                                      f"{problem}; or pass weights=PATH with --model-opt, or "
                                      f"pretrained=false to train it here.")
        try:
            net = timm.create_model(arch, pretrained=pretrained or bool(weights),
                                    num_classes=num_classes, in_chans=input_shape[0],
                                    pretrained_cfg_overlay=overlay)
        except Exception as exc:  # noqa: BLE001 - hub or file errors, re-raised with the fix
            if isinstance(exc, RuntimeError) and "Unknown model" in str(exc):
                raise ConfigError(f"timm has no model '{arch}'. See timm.list_models().") from exc
            why = f"{type(exc).__name__}: {load_error_summary(exc)}"
            if weights:
                raise CheckpointError(
                    f"Weights file {path} could not be loaded into timm:{arch} ({why}). Pass "
                    f"a state dict saved from timm's {arch}, or pretrained=false to train it here."
                ) from exc
            raise CheckpointError(
                f"Pretrained weights for timm:{arch} could not be loaded ({why}). Run once with "
                f"network access to fill the Hugging Face cache, pass weights=PATH with "
                f"--model-opt, or pretrained=false to train it here."
            ) from exc
        cfg = net.pretrained_cfg
        super().__init__(input_shape, num_classes, _per_channel(cfg.get("mean"), input_shape[0]),
                         _per_channel(cfg.get("std"), input_shape[0]))
        self.net = net
        self.arch = arch
        self.pretrained = bool(pretrained or weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.normalize(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(feats)


@MODELS.register_prefix("timm")
def timm_model(arch: str, **kwargs: Any) -> TimmClassifier:
    """Any timm architecture, pretrained when weights can be had (e.g. timm:inception_v3)."""
    return TimmClassifier(arch, **kwargs)


@dataclass
class LoadedModel:
    """A ready classifier plus the hash that identifies its weights (for downstream cache keys)."""

    name: str
    model: Classifier
    key: str
    meta: dict[str, Any]


RECIPE_OPTIONS = ("epochs", "lr", "batch_size", "train_images")


def recipe_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The training-recipe part of model options (what also applies to surrogate models)."""
    return {k: v for k, v in opts.items() if k in RECIPE_OPTIONS}


class PendingClassifier:
    """Classifier ``name`` for ``dataset``, built but not yet loaded: :attr:`key` (the hash its
    weights are cached under) is known without training; :meth:`load` loads pretrained or cached
    weights, else trains them once (a visible progress bar) and caches them.

    Lets a caller that only needs the key (e.g. the cache key of a defense trained against this
    model) avoid training a classifier that nothing will run.
    """

    def __init__(self, name: str, dataset: BenchDataset, *, cache: Cache, device: torch.device,
                 seed: int = 0, **opts: Any) -> None:
        info = dataset.info
        self.name, self.dataset, self.cache = name, dataset, cache
        self.device, self.seed = device, seed
        self.entry = MODELS.get(name)
        base_recipe = {"train_images": None, **getattr(self.entry.builder, "recipe",
                                                       Classifier.recipe)}
        self.recipe = {**base_recipe, **{k: v for k, v in opts.items() if k in base_recipe}}
        self.arch_opts = {k: v for k, v in opts.items() if k not in base_recipe}
        with rng_isolated(device):  # building draws initial weights: not from the caller's stream
            self._built: Classifier | None = self._build()  # what load() fills; None once loaded
        self.spec = {"model": name, "opts": opts, "dataset": info.name, "shape": info.input_shape,
                     "recipe": self.recipe, "seed": seed, "pretrained": self._built.pretrained}
        self.key = stable_hash(self.spec)
        self._loaded: LoadedModel | None = None

    def _build(self) -> Classifier:
        info = self.dataset.info
        return self.entry.build(input_shape=info.input_shape, num_classes=info.num_classes,
                                **self.arch_opts)

    def load(self) -> LoadedModel:
        """The classifier with its weights (trained and cached on the first call if needed)."""
        if self._loaded is None:
            # Training seeds itself; isolating it keeps the caller's random stream the same whether
            # this model came from the cache or was trained just now (a cold and a warm cache must
            # give the same defense weights under the same cache key).
            with rng_isolated(self.device):
                self._loaded, self._built = self._load(), None
        return self._loaded

    def _load(self) -> LoadedModel:
        info, model = self.dataset.info, self._built
        assert model is not None  # only load() calls this, once
        if model.pretrained:
            return LoadedModel(self.name, model.to(self.device).eval(), self.key,
                               {"pretrained": True})
        meta = self.cache.load_module(model, "classifiers", f"{info.name}-{self.name}", self.spec)
        if meta is None:
            log.info("training classifier %s on %s (cached afterwards) ...", self.name, info.name)
            x, y = self.dataset.tensors("train", self.recipe["train_images"])
            torch.manual_seed(self.seed)
            model = self._build().to(self.device)
            meta = train_classifier(model, x, y, seed=self.seed,
                                    desc=f"train {self.name} on {info.name}", device=self.device,
                                    epochs=self.recipe["epochs"], lr=self.recipe["lr"],
                                    batch_size=self.recipe["batch_size"])
            xt, yt = self.dataset.tensors("test")
            meta["test_acc"] = accuracy(model, xt.to(self.device), yt.to(self.device))
            log.info("%s on %s: test accuracy %.4f", self.name, info.name, meta["test_acc"])
            self.cache.save_module(model, "classifiers", f"{info.name}-{self.name}", self.spec,
                                   meta)
        return LoadedModel(self.name, model.to(self.device).eval(), self.key, meta)


def load_classifier(name: str, dataset: BenchDataset, *, cache: Cache, device: torch.device,
                    seed: int = 0, **opts: Any) -> LoadedModel:
    """Build classifier ``name`` for ``dataset``; load pretrained or cached weights, else train.

    Training (a visible progress bar) happens at most once per configuration: the weights are
    cached under a hash of (model, options, dataset, recipe, seed).
    """
    return PendingClassifier(name, dataset, cache=cache, device=device, seed=seed, **opts).load()


def import_robustbench() -> Any:
    """Import robustbench 1.1.1 as the package index ships it.

    Two quirks are handled here, deliberately: robustbench imports a module ``autoattack`` that the
    index ships as ``pyautoattack`` (aliased below when the original is absent), and it imports
    ``pkg_resources``, which setuptools removed in version 81.
    """
    import importlib
    import sys

    try:
        importlib.import_module("autoattack.state")
    except ImportError:
        try:
            sys.modules.setdefault("autoattack", importlib.import_module("pyautoattack"))
            state = importlib.import_module("pyautoattack.state")
            sys.modules.setdefault("autoattack.state", state)
        except ImportError:
            pass  # robustbench's own import below reports what is missing
    try:
        return importlib.import_module("robustbench.utils")
    except ImportError as exc:
        if "pkg_resources" in str(exc):
            raise ConfigError("robustbench 1.1.1 needs pkg_resources, gone from setuptools 81: "
                              "pip install 'setuptools<81'.") from exc
        raise ConfigError(f"robustbench models need the robustbench extra ({exc}): pip install "
                          f"'advdefense-bench[robustbench]'.") from exc


class RobustBenchClassifier(Classifier):
    """A RobustBench model-zoo classifier ([0,1] inputs, normalization inside, as in the zoo).

    Weights are read from ``<model_dir>/<dataset>/<threat>/<name>.pt``; robustbench downloads them
    there when the file is absent and the network is reachable.
    """

    def __init__(self, name: str, input_shape: Sequence[int] = (3, 32, 32),
                 num_classes: int = 10, dataset: str = "cifar10", threat_model: str = "Linf",
                 model_dir: str | None = None) -> None:
        super().__init__(input_shape, num_classes)
        utils = import_robustbench()
        folder = Path(model_dir).expanduser() if model_dir else cache_dir() / "robustbench"
        try:
            self.net = utils.load_model(name, model_dir=str(folder), dataset=dataset,
                                        threat_model=threat_model)
        except KeyError as exc:
            raise ConfigError(f"RobustBench has no {dataset}/{threat_model} model '{name}'. See "
                              f"robustbench's model zoo.") from exc
        except Exception as exc:  # noqa: BLE001 - download or file errors, re-raised with the fix
            raise CheckpointError(
                f"RobustBench weights for {name} could not be loaded from {folder} "
                f"({type(exc).__name__}: {load_error_summary(exc)}). Place {name}.pt under "
                f"{folder}/{dataset}/{threat_model}/ or run once with network access."
            ) from exc
        self.pretrained = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.net, "forward_features"):
            return self.net.forward_features(x)
        raise ConfigError("This RobustBench model exposes no feature maps; feature-guided "
                          "defenses need a timm or bench model.")


@MODELS.register_prefix("robustbench")
def robustbench_model(name: str, **kwargs: Any) -> RobustBenchClassifier:
    """A RobustBench model-zoo entry, e.g. robustbench:Standard (extra: [robustbench])."""
    return RobustBenchClassifier(name, **kwargs)
