"""JPEG compression as an input transform: encode each image as a JPEG and decode it again.

Papers: Das et al., "Keeping the Bad Guys Out: Protecting and Vaccinating Deep Learning with JPEG
Compression", 2017 (https://arxiv.org/abs/1705.02900), who study a range of qualities; Guo et al.,
"Countering Adversarial Images using Input Transformations", ICLR 2018
(https://arxiv.org/abs/1711.00117), who use quality 75, our default. Dziugaite et al. 2016
(https://arxiv.org/abs/1608.00853) first measured JPEG's effect on FGSM images.

The round trip is a real codec, not a differentiable imitation: pixels are rounded to 8 bits,
encoded with libjpeg (baseline, 4:2:0 chroma subsampling for RGB) and decoded, on the CPU whatever
the model's device (GPU codecs round differently). The codec is ``torchvision.io``'s batched
``encode_jpeg``/``decode_jpeg`` (2-4x faster), or Pillow where a torchvision release no longer
has them (deprecated since 0.29); both give the same pixels. Grey (1 channel) and RGB (3 channels)
images only. Nothing is trained and nothing was scaled down.

JPEG has no useful gradient, so the defense declares ``differentiable = False``: under
``--threat whitebox`` the attacker gets BPDA with the identity as the backward pass
(Athalye et al., ICML 2018), and the row records ``bpda = True``.

Example: ``python -m bench run --defense jpeg --attack pgd40 --defense-opt jpeg.quality=50``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bench.config import int_option
from bench.defense import Defense
from bench.registry import register_defense

DEFAULT_QUALITY = 75  # Guo et al. 2018


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0,1] floats -> uint8 0..255 (round half to even, as ``np.rint``), on the CPU."""
    return (x.detach().float().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8)


def torchvision_codec(images: torch.Tensor, quality: int) -> torch.Tensor | None:
    """JPEG round trip of uint8 ``images`` (N x C x H x W) with torchvision.io; None when this
    torchvision has no JPEG codec."""
    try:
        from torchvision.io import decode_jpeg, encode_jpeg
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see the module docstring
        return torch.stack(decode_jpeg(encode_jpeg(list(images.unbind(0)), quality=quality)))


def pillow_codec(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of uint8 ``images`` (N x C x H x W, C = 1 or 3) with Pillow."""
    from PIL import Image

    hwc = images.permute(0, 2, 3, 1).numpy()
    out = np.empty_like(hwc)
    for i, img in enumerate(hwc):
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, "JPEG",
                                                                         quality=quality)
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image of ``x`` (N x C x H x W in [0,1], C = 1 or 3) JPEG-encoded at ``quality`` and
    decoded; same shape, dtype and device, values in {0, 1/255, ..., 1}."""
    if len(x) == 0:
        return x.detach().clone()
    images = to_uint8(x)
    decoded = torchvision_codec(images, quality)
    if decoded is None:
        decoded = pillow_codec(images, quality)
    return (decoded.float() / 255.0).to(device=x.device, dtype=x.dtype)


@register_defense("jpeg")
class JPEG(Defense):
    """JPEG compression round trip (Das et al. 2017; Guo et al. 2018), quality 75 by default.

    Args:
        input_shape, num_classes: the dataset's image shape (1 or 3 channels) and classes.
        quality: JPEG quality, an integer in 1..100 (default 75, Guo et al.'s; lower removes
            more, 100 is near the identity).

    Example: ``python -m bench run --defense jpeg --attack fgsm --eps 8/255``
    """

    differentiable = False
    channels = (1, 3)

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 quality: int = DEFAULT_QUALITY) -> None:
        super().__init__(input_shape, num_classes)
        self.quality = int_option("jpeg", "quality", quality, 1, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """JPEG round trip of ``x`` (N x C x H x W in [0,1]); same shape, in [0,1]."""
        return jpeg_round_trip(x, self.quality)

    def metadata(self) -> dict[str, Any]:
        return {"quality": self.quality, "codec": "libjpeg, 8-bit, CPU",
                "bpda_surrogate": "identity"}
