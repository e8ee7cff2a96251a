"""Third-party classifiers behind the harness's interface: timm models and RobustBench's zoo.

Both take [0,1] inputs with their normalization inside. Pretrained weights are read as weights
only (never code): see :func:`bench.models.adapters.load_weights_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.cache import load_error_summary
from bench.config import cache_dir
from bench.errors import CheckpointError, ConfigError
from bench.models.zoo import Classifier
from bench.registry import MODELS


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
