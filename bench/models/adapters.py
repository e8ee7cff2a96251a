"""Third-party classifiers behind the harness's interface: timm models and RobustBench's zoo.

Both take [0,1] inputs with their normalization inside. Weight files are read as weights only,
never as code: a user's file through :func:`load_weights_file` (safetensors, or ``torch.load``
with ``weights_only=True``), and timm's and RobustBench's own loaders inside
:func:`weights_only_loading`, which forces ``weights_only=True`` on every ``torch.load`` they make.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.cache import load_error_summary
from bench.config import cache_dir
from bench.errors import CheckpointError, ConfigError
from bench.models.zoo import Classifier
from bench.registry import MODELS

# -- reading weights, never code ---------------------------------------------------------------

_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's order (EMA first)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
# torch's advice around the reason ("can still be loaded ... with weights_only=False"): dropped
_TORCH_BOILERPLATE = ("In PyTorch", "This file can still", "(1)", "(2)", "Please file an issue",
                      "Check the documentation")
_PICKLE_OPCODES = frozenset(ord(op.code) for op in pickletools.opcodes)


def _torch_reason(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed: for a weights-only refusal the first sentence of
    torch's reason, without its advice to retry with ``weights_only=False``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if not (isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text):
        return load_error_summary(exc)
    _, found, tail = text.partition("WeightsUnpickler error:")
    lines = [ln.strip().removeprefix("Weights only load failed.").strip()
             for ln in (tail if found else text).splitlines()]
    reason = next((ln for ln in lines if ln and not ln.startswith(_TORCH_BOILERPLATE)), "")
    reason = reason.split(". ")[0].split(".Check the doc")[0].rstrip(".") or "no reason given"
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _refusal_reason(exc: BaseException) -> str | None:
    """Why torch's weights-only unpickler refused a file that is a pickle (e.g. "Unsupported
    global: GLOBAL io.open was not an allowed global by default"); None when ``exc`` is no such
    refusal (a corrupt file: its bytes are not even pickle opcodes)."""
    if isinstance(exc, RuntimeError) and "TorchScript archives" in str(exc):
        return "a TorchScript archive holds code"
    if not (isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)):
        return None
    reason = _torch_reason(exc)
    operand = re.fullmatch(r"Unsupported operand (\d+)", reason)
    if operand and int(operand.group(1)) not in _PICKLE_OPCODES:
        return None
    return reason


def refused_weights_error(path: str | os.PathLike[str], reason: str) -> CheckpointError:
    """The one-line error for a weight file that holds more than weights (pickled code)."""
    return CheckpointError(
        f"Weights file {os.fspath(path)} is not a plain weights file: loading it would run code "
        f"it contains ({reason}). Refusing it: save the weights with safetensors or "
        f"torch.save(model.state_dict())."
    )


def _file_name(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", repr(f)))


def _load_forcing_weights_only(f: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.load`` with ``weights_only=True`` whatever the caller passed; a refused file is a
    :class:`CheckpointError` naming it."""
    kwargs["weights_only"] = True
    try:
        return torch.serialization.load(f, *args, **kwargs)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        reason = _refusal_reason(exc)
        if reason is None:
            raise
        raise refused_weights_error(_file_name(f), reason) from exc


class _TorchLoadPatch:
    """Reference-counted replacement of ``torch.load`` (nested and concurrent uses share one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: Callable[..., Any] | None = None

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                self.saved, torch.load = torch.load, _load_forcing_weights_only
            self.depth += 1

    def exit(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and self.saved is not None:
                torch.load, self.saved = self.saved, None


_PATCH = _TorchLoadPatch()


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force ``weights_only=True`` on every ``torch.load`` call made inside the block.

    For third-party loaders that call ``torch.load`` without ``weights_only`` or with
    ``weights_only=False`` (timm's hub and custom loaders, RobustBench's ``load_model``). A file
    that would need code to load raises a one-line :class:`CheckpointError` naming the file.
    ``torch.load`` is restored on exit, also on an error. While a block runs, calls from other
    threads are forced too (stricter, never looser).

    Example:
        >>> with weights_only_loading():
        ...     net = timm.create_model("resnet18", pretrained=True)
    """
    _PATCH.enter()
    try:
        yield
    finally:
        _PATCH.exit()


def _unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``checkpoint``: plain, or nested the usual ways (timm's EMA first, then
    ``state_dict``, ``model``), with ``module.``/``_orig_mod.`` wrapper prefixes stripped."""
    if isinstance(checkpoint, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(k, str) for k in checkpoint):
        raise CheckpointError(
            f"Weights file {path} holds a {type(checkpoint).__name__}, not a state dict. Save "
            f"the weights with safetensors or torch.save(model.state_dict())."
        )
    state = {}
    for key, value in checkpoint.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a user's weight file as weights only, never running code in it.

    Args:
        path: a ``.safetensors`` file, or any other file ``torch.save`` wrote (``.pth``, ``.pt``,
            ``.bin``), holding a state dict plain or nested under ``state_dict``/``model``/
            ``state_dict_ema``/``model_ema``; ``module.`` and ``_orig_mod.`` prefixes are stripped.

    Returns:
        The state dict, tensors on the CPU.

    Raises:
        CheckpointError: the file holds pickled code (refused), is unreadable or holds no state
            dict.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.serialization.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported with the fix
        reason = _refusal_reason(exc)
        if reason is not None:
            raise refused_weights_error(path, reason) from exc
        raise CheckpointError(
            f"Weights file {path} is corrupt or not a weights file ({type(exc).__name__}: "
            f"{_torch_reason(exc)}). Save the weights again with safetensors or "
            f"torch.save(model.state_dict())."
        ) from exc
    return _unwrap_state_dict(checkpoint, path)


# -- timm --------------------------------------------------------------------------------------

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


def _create_timm(arch: str, pretrained: bool, num_classes: int, in_chans: int) -> nn.Module:
    """``timm.create_model`` with timm's own pretrained loading held to weights only."""
    import timm

    try:
        with weights_only_loading():
            return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes,
                                     in_chans=in_chans)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub errors, re-raised with the fix
        if isinstance(exc, RuntimeError) and "Unknown model" in str(exc):
            raise ConfigError(f"timm has no model '{arch}'. See timm.list_models().") from exc
        why = f"{type(exc).__name__}: {load_error_summary(exc)}"
        if not pretrained:
            raise ConfigError(f"timm cannot build {arch} with num_classes={num_classes}, "
                              f"in_chans={in_chans} ({why}). Check those options.") from exc
        raise CheckpointError(
            f"Pretrained weights for timm:{arch} could not be loaded ({why}). Run once with "
            f"network access to fill the Hugging Face cache, pass weights=PATH with "
            f"--model-opt, or pretrained=false to train it here."
        ) from exc


@MODELS.register_prefix("timm", description="Any timm architecture, pretrained when weights "
                        "can be had (e.g. timm:inception_v3).")
class TimmClassifier(Classifier):
    """A timm model with its own normalization inside; ``forward_features`` is timm's.

    Weights: timm's pretrained ones (Hugging Face hub or its cache) by default, a local file with
    ``weights=PATH`` (read by :func:`load_weights_file`, loaded strictly), or none with
    ``pretrained=false``. Example: ``--model timm:resnet18 --model-opt weights=resnet18.pth``.
    """

    recipe = {"epochs": 30, "lr": 1e-3, "batch_size": 64}

    def __init__(self, arch: str, input_shape: Sequence[int] = (3, 224, 224),
                 num_classes: int = 1000, pretrained: bool = True,
                 weights: str | None = None) -> None:
        path = Path(weights).expanduser() if weights else None
        if path is not None and not path.is_file():
            raise CheckpointError(
                f"Weights file {path} for timm:{arch} does not exist. Pass weights=PATH of a "
                f"saved state dict (.safetensors, .pth), or pretrained=false to train it here."
            )
        if pretrained and path is None:
            problem = timm_hub_problem()
            if problem:
                raise CheckpointError(f"Pretrained weights for timm:{arch} cannot be fetched: "
                                      f"{problem}; or pass weights=PATH with --model-opt, or "
                                      f"pretrained=false to train it here.")
        # A user's file never reaches timm (its file loader unpickles with weights_only=False).
        net = _create_timm(arch, pretrained and path is None, num_classes, input_shape[0])
        if path is not None:
            state = load_weights_file(path)
            try:
                net.load_state_dict(state, strict=True)
            except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"Weights file {path} could not be loaded into timm:{arch} "
                    f"({type(exc).__name__}: {load_error_summary(exc)}). Pass a state dict "
                    f"saved from timm's {arch}, or pretrained=false to train it here."
                ) from exc
        cfg = net.pretrained_cfg
        super().__init__(input_shape, num_classes, _per_channel(cfg.get("mean"), input_shape[0]),
                         _per_channel(cfg.get("std"), input_shape[0]))
        self.net = net
        self.arch = arch
        self.pretrained = bool(pretrained or path is not None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.normalize(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(feats)


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


@MODELS.register_prefix("robustbench", description="A RobustBench model-zoo entry, e.g. "
                        "robustbench:Standard (extra: [robustbench]).")
class RobustBenchClassifier(Classifier):
    """A RobustBench model-zoo classifier ([0,1] inputs, normalization inside, as in the zoo).

    Weights are read from ``<model_dir>/<dataset>/<threat>/<name>.pt``; robustbench downloads them
    there when the file is absent and the network is reachable. They are read as weights only
    (:func:`weights_only_loading`): a file holding pickled code is refused.
    """

    def __init__(self, name: str, input_shape: Sequence[int] = (3, 32, 32),
                 num_classes: int = 10, dataset: str = "cifar10", threat_model: str = "Linf",
                 model_dir: str | None = None) -> None:
        super().__init__(input_shape, num_classes)
        utils = import_robustbench()
        folder = Path(model_dir).expanduser() if model_dir else cache_dir() / "robustbench"
        try:
            with weights_only_loading():  # robustbench calls torch.load without weights_only
                self.net = utils.load_model(name, model_dir=str(folder), dataset=dataset,
                                            threat_model=threat_model)
        except CheckpointError:
            raise  # a refused file, named: <model_dir>/<dataset>/<threat>/<name>.pt
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
