"""Classifiers: every registered model on its datasets' shapes, the train-once cache, timm."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import bench.models.lifecycle
from bench.cache import Cache, tensors_digest
from bench.data import get_dataset
from bench.errors import CheckpointError, ConfigError
from bench.models import Classifier, LoadedModel, load_classifier, timm_hub_problem
from bench.registry import DATASETS, MODELS
from tests.bench.models.helpers import timm_state

CPU = torch.device("cpu")


def _model_cases() -> list[Any]:
    """(model, input shape, classes) for every model a registered dataset names, plus every
    registered model at its default shape; built from the registries, so new entries are tested
    without new test code."""
    cases: dict[tuple[str, tuple[int, ...], int], None] = {}
    for ds_name in DATASETS.names():
        info = get_dataset(ds_name).info
        for model in info.models:
            cases[(model, info.input_shape, info.num_classes)] = None
    for model in MODELS.names():
        if not any(m == model for m, _, _ in cases):
            cases[(model, (3, 32, 32), 10)] = None
    return [pytest.param(m, s, k, id=f"{m}-{'x'.join(map(str, s))}", marks=_marks(m, s))
            for m, s, k in cases]


def _marks(model: str, shape: tuple[int, ...]) -> list[pytest.MarkDecorator]:
    # ImageNet-size timm networks take seconds per forward pass on a CPU: real size in the slow
    # run; the fast run builds the timm family at a small size below.
    return [pytest.mark.slow] if model.startswith("timm:") and min(shape[1:]) >= 224 else []


def _build(name: str, shape: tuple[int, ...], classes: int) -> Classifier:
    extra = {"pretrained": False} if name.startswith("timm:") else {}
    return MODELS.build(name, input_shape=shape, num_classes=classes, **extra)


def test_every_dataset_names_registered_models() -> None:
    for ds_name in DATASETS.names():
        info = get_dataset(ds_name).info
        assert len(info.models) >= 2, f"{ds_name} needs a target and a surrogate model"
        for model in info.models:
            assert model in MODELS, f"{ds_name} names unknown model {model!r}"
            if model.startswith("timm:"):
                timm = pytest.importorskip("timm")
                assert timm.is_model(model.partition(":")[2]), f"timm has no {model!r}"


@pytest.mark.parametrize(("name", "shape", "classes"), _model_cases())
def test_model_builds_and_gives_logits(name: str, shape: tuple[int, ...], classes: int) -> None:
    torch.manual_seed(0)
    model = _build(name, shape, classes).eval()
    assert isinstance(model, Classifier)
    assert model.input_shape == tuple(shape) and model.num_classes == classes
    x = torch.rand(2, *shape)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.dim() == 4 and feats.shape[0] == 2, "forward_features must be conv maps"
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.allclose(model.forward_head(feats), logits)


@pytest.mark.parametrize(("name", "shape", "opts"),
                         [("cnn", (1, 28, 28), {}), ("resnet18", (3, 32, 32), {"width": 8})])
def test_models_are_differentiable_in_the_input(name: str, shape: tuple[int, ...],
                                                opts: dict[str, Any]) -> None:
    model = MODELS.build(name, input_shape=shape, num_classes=10, **opts).eval()
    x = torch.rand(2, *shape, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_normalization_lives_inside_the_model() -> None:
    model = _build("resnet18", (3, 32, 32), 10)
    assert model.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert "mean" in model.state_dict()  # saved with the weights, moved with .to(device)
    x = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(model.normalize(x), (x - model.mean) / model.std)


# -- load_classifier: train once, then load from the cache -------------------------------------

OPTS = {"epochs": 1, "batch_size": 64}


def _no_training(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the classifier was retrained instead of loaded from the cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel]:
    """A cnn trained for one epoch on digits into a cache of its own."""
    root = tmp_path_factory.mktemp("classifier-cache")
    loaded = load_classifier("cnn", get_dataset("digits"), cache=Cache(root), device=CPU, **OPTS)
    return root, loaded


def _weights_file(root: Path) -> Path:
    (path,) = (root / "classifiers").glob("digits-cnn-*.safetensors")
    return path


def _copy(trained: tuple[Path, LoadedModel], tmp_path: Path) -> tuple[Cache, Path]:
    root = tmp_path / "cache"
    shutil.copytree(trained[0], root)
    return Cache(root), _weights_file(root)


def test_load_classifier_trains_once_then_loads(
    trained: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, first = trained
    assert not first.model.training
    assert first.meta["epochs"] == 1 and first.meta["train_images"] == 1437
    assert first.meta["test_acc"] > 0.3  # one epoch on 1,437 images: well above chance
    path = _weights_file(root)
    assert path.with_suffix(".json").exists()

    cache, _ = _copy(trained, tmp_path)
    monkeypatch.setattr(bench.models.lifecycle, "train_classifier", _no_training)
    again = load_classifier("cnn", get_dataset("digits"), cache=cache, device=CPU, **OPTS)
    assert again.key == first.key and again.meta == first.meta
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    x, _ = get_dataset("digits").tensors("test", 8)
    with torch.no_grad():
        assert torch.equal(first.model(x), again.model(x))


def test_load_classifier_keys_depend_on_the_recipe(
    trained: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _ = _copy(trained, tmp_path)
    seen: list[dict[str, Any]] = []

    def fake_train(model: Any, x: Any, y: Any, **kw: Any) -> dict[str, Any]:
        seen.append(kw)
        return {"final_loss": 0.0}

    monkeypatch.setattr(bench.models.lifecycle, "train_classifier", fake_train)
    other = load_classifier("cnn", get_dataset("digits"), cache=cache, device=CPU, epochs=2,
                            batch_size=64)
    assert len(seen) == 1 and seen[0]["epochs"] == 2 and seen[0]["lr"] == 1e-3
    assert other.key != trained[1].key
    assert len(list((cache.root / "classifiers").glob("*.safetensors"))) == 2


def _expect_checkpoint_error(cache: Cache, path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(bench.models.lifecycle, "train_classifier", _no_training)
    with pytest.raises(CheckpointError) as err:
        load_classifier("cnn", get_dataset("digits"), cache=cache, device=CPU, **OPTS)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_corrupt_cached_weights_raise_checkpoint_error(
    trained: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, path = _copy(trained, tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    assert "corrupt" in _expect_checkpoint_error(cache, path, monkeypatch)


def test_sidecar_with_another_key_raises_checkpoint_error(
    trained: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, path = _copy(trained, tmp_path)
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "key_hash": "deadbeef"}))
    assert "different configuration" in _expect_checkpoint_error(cache, path, monkeypatch)


def test_state_dict_that_does_not_fit_raises_checkpoint_error(
    trained: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, path = _copy(trained, tmp_path)
    other = _build("cnn3x3", (1, 28, 28), 10)
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    save_file(state, str(path))
    side = path.with_suffix(".json")  # sealed as if other code had written it consistently
    sidecar = json.loads(side.read_text())
    side.write_text(json.dumps({**sidecar, "digest": tensors_digest(state, sidecar["meta"])}))
    msg = _expect_checkpoint_error(cache, path, monkeypatch)
    assert "do not fit digits-cnn (Missing key(s)" in msg and "Delete the file" in msg


# -- timm --------------------------------------------------------------------------------------

@pytest.fixture
def hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network and an empty Hugging Face / torch hub cache (set before and after import)."""
    hub = pytest.importorskip("huggingface_hub.constants")
    home = tmp_path / "hf"
    for var, value in [("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(home)),
                       ("HF_HUB_CACHE", str(home / "hub")), ("TORCH_HOME", str(tmp_path / "th"))]:
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HOME", str(home))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_timm_model_without_pretrained_weights_builds_offline(hub_offline: Path) -> None:
    model = MODELS.build("timm:resnet18", input_shape=(3, 64, 64), num_classes=7,
                         pretrained=False).eval()
    assert not model.pretrained and MODELS.where("timm:resnet18") == "bench.models.adapters"
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)
        assert model.forward_features(torch.rand(1, 3, 64, 64)).dim() == 4


def test_timm_model_on_grey_images(hub_offline: Path) -> None:
    model = MODELS.build("timm:resnet18", input_shape=(1, 28, 28), num_classes=10,
                         pretrained=False).eval()
    assert model.mean.shape == (1, 1, 1, 1)
    assert model.mean.item() == pytest.approx(sum(model.net.pretrained_cfg["mean"]) / 3)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_a_local_file(hub_offline: Path, tmp_path: Path, suffix: str) -> None:
    state = timm_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = MODELS.build("timm:resnet18", input_shape=(3, 224, 224), num_classes=1000,
                         weights=str(path))
    assert model.pretrained
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.net.fc.weight, state["fc.weight"])
    assert torch.equal(model.net.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_timm_can_reach_the_hugging_face_hub() -> None:
    """The installed timm and huggingface_hub work together (else no pretrained weights at all)."""
    pytest.importorskip("timm")
    assert timm_hub_problem() is None


def test_timm_pretrained_weights_come_from_the_hugging_face_cache_offline(
        hub_offline: Path) -> None:
    """The real pretrained path (timm -> huggingface_hub -> its cache), with a cache entry written
    here in the hub's layout, as a run with network access leaves it."""
    state = timm_state()
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_offline / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / revision / "model.safetensors"))
    model = MODELS.build("timm:resnet18", input_shape=(3, 224, 224), num_classes=1000)
    assert model.pretrained
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.net.fc.bias, state["fc.bias"])


def test_timm_too_old_for_huggingface_hub_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _hub = pytest.importorskip("timm.models._hub")
    monkeypatch.setattr(_hub, "_has_hf_hub", False)
    with pytest.raises(CheckpointError) as err:
        MODELS.build("timm:resnet18")
    msg = str(err.value)
    assert "\n" not in msg and "timm:resnet18" in msg and "pip install" in msg
    assert "pretrained=false" in msg


def test_timm_pretrained_without_weights_offline_is_a_checkpoint_error(hub_offline: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        MODELS.build("timm:resnet18", input_shape=(3, 224, 224), num_classes=1000)
    msg = str(err.value)
    assert "\n" not in msg
    assert "timm:resnet18" in msg and "weights=PATH" in msg and "pretrained=false" in msg


def test_timm_missing_weights_file_is_a_checkpoint_error(hub_offline: Path,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError) as err:
        MODELS.build("timm:resnet18", weights=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_timm_weights_that_do_not_fit_are_a_checkpoint_error(hub_offline: Path,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(CheckpointError) as err:
        MODELS.build("timm:resnet18", weights=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_timm_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="timm has no model 'resnet_nope'"):
        MODELS.build("timm:resnet_nope", pretrained=False)
