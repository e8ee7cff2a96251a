"""Frozen VGG feature extractors: the loss networks of perceptual (feature) losses.

Used by the perceptual-loss autoencoder (VGG-16, Johnson et al. 2016 style losses) and GCLN
(VGG-19). :func:`feature_extractor` returns a :class:`FeatureNet` that maps [0,1] images to the
outputs of chosen modules of torchvision's ``vgg16().features`` / ``vgg19().features``.

Weights (``weights=``):

* ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` weights, read from the local torch hub cache
  (``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` or ``vgg19-dcbb9e9d.pth``; honours
  ``$TORCH_HOME``). Nothing is ever downloaded: a missing file is a one-line ConfigError that
  names the path and how to get the file.
* ``"random"`` (the offline substitute): the same architecture with fixed random weights, He
  normal with fan-in (std ``sqrt(2 / (C_in * 9))``), zero biases, drawn from a generator seeded
  with ``seed`` (so every machine gets the same loss network).
* ``"auto"`` (default): ImageNet weights when the file is in the cache, else the substitute.

The result's ``source`` (``vgg16-imagenet`` or ``vgg16-random-kaiming-seed0``) says which one was
used; record it in metadata and in every cache key, so the two never collide.

Why random weights as the substitute. ImageNet VGG weights cannot be downloaded on this offline
machine and nothing else with the same layers ships with torch. A VGG with fixed random weights
keeps everything the papers specify exact: the architecture, the chosen layers, the shapes of the
feature maps and hence the paper's 1/numel loss weights. Deep convolutional features with random
weights are known to be good perceptual and texture statistics: He, Wang & Hopcroft, "A Powerful
Generative Model Using Random Weights for the Deep Image Representation" (NeurIPS 2016) invert and
synthesize images with a random-weight VGG-19 loss; Ulyanov et al. (deep image prior, CVPR 2018)
show how much image structure an untrained conv net carries. Fan-in scaling (He et al., 2015)
keeps activations at the input's scale through all 13-16 layers, so every weighted term stays
comparable in size, as 1/numel weighting intends; torchvision's own fan-out initialisation
shrinks their mean square ~170-fold by ``relu5_3`` (measured on sparse binary 28x28 images),
which would all but silence the deep terms.

The alternative considered: the target classifier's own features (what HGD's FGD uses). It would
turn the paper's method into a different one: the loss network would no longer be an independent
sub-network that "does not have to be trained for the same classification purpose" (the AE
paper's design argument), the paper's three maps and their 1/numel weights would have no
counterpart in a 2-conv MNIST CNN, and the denoiser would be tuned to the attacked model itself
(that is HGD's FGD, already in the harness). Random VGG keeps the paper's method and changes only
where its loss network's weights come from.

A FeatureNet has no parameters or buffers in the module tree (``parameters()`` and
``state_dict()`` are empty), so a defense may hold it as an attribute: it is not saved with the
defense's cached weights and not given to its optimizer. ``.to()``/``.half()`` still reach the
hidden VGG layers, and ``forward`` moves them to the input's device when needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
SUBSTITUTE = "random"
WEIGHTS = ("auto", "imagenet", SUBSTITUTE)
# (torchvision's VGG config, its weights enum): torchvision is imported on first use, not with
# the plugin (importing torchvision.models takes ~1.5 s, paid by every run otherwise).
ARCHS: dict[str, tuple[str, str]] = {"vgg16": ("D", "VGG16_Weights"),
                                     "vgg19": ("E", "VGG19_Weights")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weight_path(arch: str) -> Path:
    """Where torchvision keeps ``arch``'s ImageNet weights in the local torch hub cache."""
    _check_arch(arch)
    import torchvision.models

    url = getattr(torchvision.models, ARCHS[arch][1]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def resolve_source(arch: str, weights: str = "auto", seed: int = 0) -> str:
    """The ``source`` a :func:`feature_extractor` call would use, without building anything.

    Raises:
        ConfigError: unknown ``arch``/``weights``, or ``imagenet`` without the cached file.
    """
    _check_arch(arch)
    if weights not in WEIGHTS:
        raise ConfigError(f"Loss-network weights={weights!r}: use one of {', '.join(WEIGHTS)}.")
    path = weight_path(arch)
    if weights == "imagenet" and not path.is_file():
        raise ConfigError(
            f"ImageNet weights for {arch} are not in the local torch cache: expected {path}; "
            f"run python -c \"import torchvision; torchvision.models.{arch}("
            f"weights='IMAGENET1K_V1')\" once on a machine with internet and copy the file "
            f"there, or use weights=auto.")
    if weights == "imagenet" or (weights == "auto" and path.is_file()):
        return f"{arch}-imagenet"
    return f"{arch}-{SUBSTITUTE}-kaiming-seed{int(seed)}"


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"Loss-network arch={arch!r}: use one of {', '.join(ARCHS)}.")


class FeatureNet(nn.Module):
    """A frozen VGG trunk returning the outputs of chosen modules of ``vgg.features``.

    Args:
        trunk: ``vgg.features[: max(layers) + 1]`` with its weights loaded.
        layers: indices into ``vgg.features``; ``forward`` returns their outputs in this order.
        source: where the weights came from (recorded in metadata and cache keys).
        min_size: upsample (bilinear) inputs whose shorter side is below this, or None.
    """

    def __init__(self, trunk: nn.Sequential, layers: Sequence[int], source: str,
                 min_size: int | None = None) -> None:
        super().__init__()
        for p in trunk.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "trunk", trunk.eval())  # outside the module tree: never saved
        self.layers = tuple(int(i) for i in layers)
        self.source = source
        self.min_size = min_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        super().train(False)

    def _apply(self, fn: Any, recurse: bool = True) -> FeatureNet:  # .to(), .half(), .cuda()
        self.trunk._apply(fn)
        self.mean, self.std = fn(self.mean), fn(self.std)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> FeatureNet:  # noqa: ARG002 - always in eval mode
        """No-op: the loss network stays in eval mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of ``x`` (N x C x H x W in [0,1], C = 1 or 3), one per requested layer.

        Grayscale is replicated to 3 channels, ImageNet normalization applied, and images
        smaller than ``min_size`` upsampled. Gradients flow to ``x``; never to the weights.
        """
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"FeatureNet takes N x 1|3 x H x W images, got {tuple(x.shape)}; "
                              f"convert the images to grayscale or RGB first.")
        if self.mean.device != x.device or self.mean.dtype != x.dtype:
            self.to(device=x.device, dtype=x.dtype)
        h = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        if self.min_size and min(h.shape[-2:]) < self.min_size:
            s = self.min_size / min(h.shape[-2:])
            size = (math.ceil(h.shape[-2] * s), math.ceil(h.shape[-1] * s))
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        out: dict[int, torch.Tensor] = {}
        for i, module in enumerate(self.trunk):
            h = module(h)
            if i in self.layers:
                out[i] = h
        return [out[i] for i in self.layers]

    def extra_repr(self) -> str:
        return f"source={self.source}, layers={self.layers}, min_size={self.min_size}"


def _vgg_cfg(cfg: str) -> list[Any]:
    from torchvision.models.vgg import cfgs

    return cfgs[cfg]


def _make_trunk(cfg: str) -> nn.Sequential:
    from torchvision.models.vgg import make_layers

    return make_layers(_vgg_cfg(cfg))


def _random_trunk(cfg: str, seed: int) -> nn.Sequential:
    trunk = _make_trunk(cfg)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in trunk:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                               * math.sqrt(2.0 / fan_in))
                m.bias.zero_()
    return trunk


def _imagenet_trunk(cfg: str, path: Path) -> nn.Sequential:
    trunk = _make_trunk(cfg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        trunk.load_state_dict({k[len("features."):]: v for k, v in state.items()
                               if k.startswith("features.")})
    except Exception as exc:  # noqa: BLE001 - any unreadable or mismatched file is reported
        raise CheckpointError(f"Cannot load VGG weights from {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}; delete the file "
                              f"and fetch it again.") from exc
    return trunk


def feature_extractor(arch: str, layers: Sequence[int], *, weights: str = "auto", seed: int = 0,
                      min_size: int | None = None) -> FeatureNet:
    """A frozen VGG feature extractor (see the module docstring for the weight sources).

    Args:
        arch: ``vgg16`` or ``vgg19`` (torchvision's architectures, no batch norm).
        layers: indices into torchvision's ``vgg.features`` Sequential; the output after each
            listed module is returned (e.g. 8 = relu2_2, 15 = relu3_3 in VGG-16).
        weights: ``auto``, ``imagenet`` or ``random``.
        seed: seed of the random substitute's weights.
        min_size: upsample inputs whose shorter side is below this (None: never).

    Returns:
        A :class:`FeatureNet` in eval mode with frozen weights and a ``source`` attribute.
    """
    source = resolve_source(arch, weights, seed)
    cfg = ARCHS[arch][0]
    n_modules = sum(1 if v == "M" else 2 for v in _vgg_cfg(cfg))  # conv + ReLU, or max-pool
    idx = [int(i) for i in layers]
    if not idx or min(idx) < 0 or max(idx) >= n_modules:
        raise ConfigError(f"Loss-network layers={list(layers)!r}: give indices into {arch}."
                          f"features, 0..{n_modules - 1} (e.g. 8,15,22 = relu2_2,3_3,4_3).")
    if source.endswith("-imagenet"):
        trunk = _imagenet_trunk(cfg, weight_path(arch))
    else:
        trunk = _random_trunk(cfg, seed)
    log.info("loss network %s, layers %s", source, idx)
    return FeatureNet(trunk[: max(idx) + 1], idx, source, min_size)
