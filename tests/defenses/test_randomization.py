"""Random resizing and padding (Xie et al., ICLR 2018): the exact nearest resize and zero border at
299 px, the draws' ranges and per-image independence, seeding by torch's global RNG, the scaled
pad size and its option, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.defenses.randomization import draw_transforms, pad_and_resize, paper_pad_to
from bench.errors import ConfigError
from bench.registry import DEFENSES


def build(shape: tuple[int, int, int] = (1, 28, 28), **opts: object) -> torch.nn.Module:
    return DEFENSES.build("randomization", input_shape=shape, **opts)


def tf_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel of the authors' ``tf.image.resize_images``
    NEAREST_NEIGHBOR (TF1 legacy): ``min(floor(i * float32(n_in / n_out)), n_in - 1)``."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 20, 40)])
@pytest.mark.parametrize("n", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_range_dtype_and_no_mutation(shape: tuple[int, int, int], n: int,
                                           dtype: torch.dtype) -> None:
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(n), dtype=dtype)
    x0 = x.clone()
    out = build(shape)(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, x0)
    if n:
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)  # something was done


@pytest.mark.parametrize(("shape", "dtype"), [((1, 28, 28), torch.float32),
                                             ((3, 224, 224), torch.bfloat16)])
def test_white_images_stay_within_one(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    """The bilinear resize back overshoots 1 by an ulp on some pixels (31 -> 28 px in float32,
    248 -> 224 px in bfloat16); the output is clamped to [0,1] as the contract requires."""
    torch.manual_seed(0)
    out = build(shape)(torch.ones(8, *shape, dtype=dtype))
    assert out.max() <= 1 and out.min() >= 0


def test_declared_flags() -> None:
    d = build()
    assert d.kind == "preprocessor" and d.randomized and d.differentiable
    assert not d.needs_training


@pytest.mark.parametrize(("size", "pad"), [(28, 31), (32, 35), (299, 331), (224, 248), (1, 2)])
def test_pad_size_is_the_paper_ratio(size: int, pad: int) -> None:
    assert paper_pad_to(size) == pad
    if size > 1:
        d = build((3, size, size))
        assert d.pad == (pad, pad)
        meta = d.metadata()
        assert meta["pad_to"] == pad and meta["resize_range"] == [size, pad - 1]
        assert meta["resize_back"] == "bilinear" and "299" in meta["scaled"]


def test_pad_to_option_and_non_square_sides() -> None:
    assert build(pad_to=29).pad == (29, 29)
    assert build(pad_to=40.0).metadata()["pad_to"] == 40
    assert build((3, 20, 40)).pad == (22, 44)


@pytest.mark.parametrize("bad", [28, 10, 0, -3])
def test_too_small_pad_to_is_a_one_line_config_error(bad: int) -> None:
    too_small = r"randomization pad_to=.*>= 29.*randomization\.pad_to=29"
    with pytest.raises(ConfigError, match=too_small) as info:
        build(pad_to=bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [30.5, "big", True])
def test_non_integer_pad_to_is_a_one_line_config_error(bad: object) -> None:
    not_int = r"randomization.*pad_to=.*randomization\.pad_to="
    with pytest.raises(ConfigError, match=not_int) as info:
        build(pad_to=bad)
    assert "\n" not in str(info.value)


def test_same_seed_same_output_other_seed_differs() -> None:
    d, x = build((3, 32, 32)), torch.rand(4, 3, 32, 32)
    torch.manual_seed(7)
    a = d(x)
    torch.manual_seed(7)
    b = d(x)
    torch.manual_seed(8)
    c = d(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_each_image_gets_its_own_transform() -> None:
    d = build()
    x = torch.rand(1, 1, 28, 28).expand(16, 1, 28, 28).contiguous()
    torch.manual_seed(0)
    out = d(x)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 4, "identical images got the same transform"


def test_draws_cover_the_paper_ranges_inclusive() -> None:
    torch.manual_seed(0)
    rnd_h, rnd_w, top, left = draw_transforms(20000, (28, 28), (31, 31))
    assert torch.equal(rnd_h, rnd_w)
    assert set(rnd_h.tolist()) == {28, 29, 30}  # s..S-1: 31 itself is never drawn
    counts = torch.bincount(rnd_h - 28).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1  # uniform
    for offset in (top, left):
        assert (offset >= 0).all() and (offset <= 31 - rnd_h).all()
        for r in (28, 29, 30):  # every position 0..S-rnd, the flush last one included
            assert set(offset[rnd_h == r].tolist()) == set(range(31 - r + 1))
    assert not torch.equal(top, left)


def test_non_square_draws_keep_the_aspect_ratio() -> None:
    torch.manual_seed(0)
    rnd_h, rnd_w, top, left = draw_transforms(500, (20, 40), (22, 44))
    assert torch.equal(rnd_w, rnd_h * 2)
    assert (top <= 22 - rnd_h).all() and (left <= 44 - rnd_w).all()


PLACEMENTS = [(299, (0, 32), (32, 0)), (330, (1, 0), (0, 1)), (312, (5, 19), (10, 0)),
              (317, (7, 7), (3, 14))]  # extreme sizes and offsets; per-image offsets


@pytest.mark.parametrize(("rnd", "tops", "lefts"), PLACEMENTS)
def test_before_the_resize_back_exact_nearest_resize_in_a_zero_border(
        rnd: int, tops: tuple[int, int], lefts: tuple[int, int]) -> None:
    """At 299 px: the padded image is the authors' nearest resize of each image placed at its own
    (top, left) in a 331 px zero canvas (no value changed, every pixel where TF puts it)."""
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(rnd)) * 0.9 + 0.05
    out = pad_and_resize(x, rnd, torch.tensor(tops), torch.tensor(lefts), 331)
    assert out.shape == (2, 3, 331, 331)
    idx = torch.from_numpy(tf_nearest_index(299, rnd))
    for i in range(2):
        t, left = tops[i], lefts[i]
        inside = out[i, :, t:t + rnd, left:left + rnd]
        assert torch.equal(inside, x[i][:, idx][:, :, idx])
        border = out[i].clone()
        border[:, t:t + rnd, left:left + rnd] = 0
        assert border.abs().max() == 0
        assert (inside > 0).all()


def test_forward_is_the_resize_back_of_the_drawn_padded_images() -> None:
    d, x = build((3, 32, 32)), torch.rand(12, 3, 32, 32)
    torch.manual_seed(3)
    rnd_h, rnd_w, top, left = draw_transforms(12, (32, 32), d.pad)
    want = torch.cat([pad_and_resize(x[i:i + 1], (int(rnd_h[i]), int(rnd_w[i])), int(top[i]),
                                     int(left[i]), d.pad) for i in range(12)])
    want = F.interpolate(want, size=(32, 32), mode="bilinear", align_corners=False)
    torch.manual_seed(3)
    assert torch.allclose(d(x), want.clamp(0, 1), atol=1e-6)


def test_gradient_flows_to_the_input() -> None:
    d = build((3, 32, 32))
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    torch.manual_seed(0)
    d(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    torch.manual_seed(0)
    out = d.attack_forward(x)  # differentiable: the attacker's forward is the forward pass
    torch.manual_seed(0)
    assert torch.equal(out, d(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_keeps_the_device_and_draws_like_the_cpu() -> None:
    d, x = build((3, 32, 32)), torch.rand(8, 3, 32, 32)
    torch.manual_seed(5)
    cpu = d(x)
    torch.manual_seed(5)
    gpu = d.cuda()(x.cuda())
    assert gpu.device == x.cuda().device and gpu.dtype == x.dtype
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
