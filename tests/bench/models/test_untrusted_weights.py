"""Untrusted weight files never run code: a user's timm file, timm's and RobustBench's loaders.

Each test builds a live malicious pickle (its unpickling creates a marker file, as a payload
would run code) and checks that the harness refuses it with a one-line CheckpointError and that
the marker never appears.
"""

from __future__ import annotations

import builtins
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from bench.errors import CheckpointError
from bench.models import import_robustbench
from bench.models.adapters import load_weights_file, weights_only_loading
from bench.registry import MODELS
from tests.bench.models.helpers import timm_state

needs_robustbench = pytest.mark.skipif(importlib.util.find_spec("robustbench") is None,
                                       reason="the robustbench extra is not installed")


class _Payload:
    """Unpickling this opens (creates) ``marker``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


def _malicious_file(path: Path, marker: Path) -> Path:
    """A torch.save file holding a tensor and the payload; proves on a copy that it is live."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(1), "evil": _Payload(marker)}, path)
    probe = path.parent / f"probe-{path.name}"
    shutil.copy(path, probe)
    assert not marker.exists()
    torch.load(probe, weights_only=False)["evil"].close()  # what an unprotected loader does
    assert marker.exists(), "the payload is not live: the test would prove nothing"
    marker.unlink()
    probe.unlink()
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


def _assert_refused(err: pytest.ExceptionInfo[CheckpointError], path: Path,
                    marker: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert f"Weights file {path} is not a plain weights file" in msg
    assert "Refusing it" in msg and "GLOBAL io.open" in msg
    assert "weights_only=False" not in msg  # torch's "it can still be loaded" advice is dropped
    assert not marker.exists(), "the payload ran"
    return msg


def _build_timm(path: Path) -> Any:
    pytest.importorskip("timm")
    return MODELS.build("timm:resnet18", input_shape=(3, 64, 64), num_classes=1000,
                        weights=str(path))


# -- timm:<arch> with weights=PATH -------------------------------------------------------------

@pytest.mark.parametrize("name", ["evil.pth", "evil.bin"])
def test_timm_refuses_a_weights_file_holding_code(tmp_path: Path, marker: Path,
                                                  name: str) -> None:
    path = _malicious_file(tmp_path / name, marker)
    with pytest.raises(CheckpointError) as err:
        _build_timm(path)
    _assert_refused(err, path, marker)


def test_timm_refuses_a_legacy_format_file_holding_code(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "evil-legacy.pt"
    torch.save({"w": torch.zeros(1), "evil": _Payload(marker)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        _build_timm(path)
    _assert_refused(err, path, marker)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "nested", "ema", "ddp"])
def test_timm_loads_plain_weights_in_every_usual_layout(tmp_path: Path, fmt: str) -> None:
    state = timm_state(seed=7)
    path = tmp_path / f"resnet18.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "pth":
        torch.save(state, path)
    elif fmt == "nested":
        torch.save({"state_dict": state, "epoch": 3, "arch": "resnet18"}, path)
    elif fmt == "ema":  # timm's train script: EMA weights preferred over the raw ones
        torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in state.items()},
                    "state_dict_ema": state}, path)
    else:  # saved from DistributedDataParallel
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    model = _build_timm(path)
    assert model.pretrained
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_safetensors_and_pth_give_the_same_weights(tmp_path: Path) -> None:
    state = timm_state(seed=7)
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    a, b = load_weights_file(tmp_path / "w.safetensors"), load_weights_file(tmp_path / "w.pth")
    assert a.keys() == b.keys() == state.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_corrupt_weights_file_is_not_called_code(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        _build_timm(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "corrupt" in msg
    assert "run code" not in msg and "weights_only" not in msg  # no advice to load it unsafely


def test_a_file_without_a_state_dict_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        _build_timm(path)


# -- weights_only_loading: timm's and RobustBench's own loaders ---------------------------------

def test_weights_only_loading_overrides_weights_only_false(tmp_path: Path, marker: Path) -> None:
    path = _malicious_file(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as err, weights_only_loading():
        torch.load(path, map_location="cpu", weights_only=False)
    _assert_refused(err, path, marker)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    with weights_only_loading():
        assert torch.equal(torch.load(good, weights_only=False)["w"], torch.ones(2))


def test_weights_only_loading_restores_torch_load(tmp_path: Path, marker: Path) -> None:
    original = torch.load
    with weights_only_loading():
        assert torch.load is not original
        with weights_only_loading():  # nested
            assert torch.load is not original
        assert torch.load is not original, "the inner block restored torch.load too early"
    assert torch.load is original
    path = _malicious_file(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError), weights_only_loading():
        torch.load(path)
    assert torch.load is original
    with pytest.raises(ZeroDivisionError), weights_only_loading():
        _ = 1 / 0
    assert torch.load is original


def test_timm_pretrained_loading_runs_inside_weights_only_loading(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, marker: Path) -> None:
    """timm's hub branches that call torch.load without weights_only (list locations, custom
    loads) are stood in for by a fake load_pretrained that does just that."""
    timm_builder = pytest.importorskip("timm.models._builder")
    path = _malicious_file(tmp_path / "pytorch_model.bin", marker)
    monkeypatch.setattr("bench.models.adapters.timm_hub_problem", lambda: None)

    def unguarded_load_pretrained(model: Any, *args: Any, **kwargs: Any) -> None:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    monkeypatch.setattr(timm_builder, "load_pretrained", unguarded_load_pretrained)
    with pytest.raises(CheckpointError) as err:
        MODELS.build("timm:resnet18", input_shape=(3, 64, 64), num_classes=1000)
    _assert_refused(err, path, marker)


@needs_robustbench
@pytest.mark.parametrize("torch_default", ["weights_only", "unsafe"])
def test_robustbench_refuses_a_zoo_file_holding_code(tmp_path: Path, marker: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     torch_default: str) -> None:
    """robustbench calls torch.load without weights_only: safe by torch's default (>= 2.6), and
    still safe where that default is off (torch < 2.6, or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1,
    which overrides only calls that do not pass weights_only)."""
    if torch_default == "unsafe":
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import_robustbench()
    path = _malicious_file(tmp_path / "cifar10" / "Linf" / "Standard.pt", marker)
    with pytest.raises(CheckpointError) as err:
        MODELS.build("robustbench:Standard", input_shape=(3, 32, 32), num_classes=10,
                     model_dir=str(tmp_path))
    _assert_refused(err, path, marker)
