"""JPEG round trip: a real codec (same bytes as PIL), near-identity at quality 100, BPDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench.defenses import jpeg
from bench.errors import ConfigError
from bench.registry import DEFENSES


def smooth_images(n: int, c: int, size: int = 28) -> torch.Tensor:
    """Natural-looking (smooth) images: blurred random blobs in [0,1]."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False).clamp(0, 1)


def pil_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for img in (x * 255).round().to(torch.uint8):
        arr = img.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, "JPEG",
                                                                         quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(torch.from_numpy(dec.reshape(*dec.shape[:2], -1).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quality", [10, 75, 100])
def test_equals_pil_round_trip(channels: int, quality: int) -> None:
    x = smooth_images(4, channels, 32)
    d = DEFENSES.build("jpeg", input_shape=(channels, 32, 32), quality=quality)
    out = d(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out - pil_round_trip(x, quality)).abs().max() <= 1 / 255 + 1e-6


def test_pillow_fallback_gives_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    x = smooth_images(3, 3, 24)
    d = DEFENSES.build("jpeg", input_shape=(3, 24, 24), quality=30)
    fast = d(x)
    monkeypatch.setattr(jpeg, "torchvision_codec", lambda images, quality: None)
    assert torch.equal(d(x), fast)


def test_quality_100_is_near_identity_and_low_quality_changes_the_image() -> None:
    x = smooth_images(6, 1)
    high = DEFENSES.build("jpeg", quality=100)(x)
    low = DEFENSES.build("jpeg", quality=5)(x)
    assert (high - x).abs().mean() < 2 / 255
    assert (low - x).abs().mean() > 3 * (high - x).abs().mean()
    assert low.min() >= 0 and low.max() <= 1


def test_default_quality_is_guo_et_al() -> None:
    d = DEFENSES.build("jpeg")
    assert d.quality == 75 and d.params["quality"] == 75 and not d.differentiable


def test_bpda_identity_gradient_and_unchanged_forward() -> None:
    d = DEFENSES.build("jpeg", quality=50)
    x = smooth_images(2, 1).requires_grad_(True)
    out = d.attack_forward(x)
    assert torch.equal(out.detach(), d(x.detach()))
    (out * 3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))


def test_empty_batch() -> None:
    assert DEFENSES.build("jpeg")(torch.empty(0, 1, 28, 28)).shape == (0, 1, 28, 28)


@pytest.mark.parametrize("bad", [0, 101, -5, 7.5, "high", True])
def test_bad_quality_is_a_one_line_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"jpeg.* quality=.*jpeg\.quality=") as info:
        DEFENSES.build("jpeg", quality=bad)
    assert "\n" not in str(info.value)


def test_rejects_unsupported_channel_counts() -> None:
    with pytest.raises(ConfigError, match="channels"):
        DEFENSES.build("jpeg", input_shape=(2, 28, 28))
