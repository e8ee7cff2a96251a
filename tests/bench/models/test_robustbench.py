"""robustbench 1.1.1 as the package index ships it: the pyautoattack alias, the pkg_resources
requirement, and loading a model-zoo entry offline from a local weight file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from bench.errors import ConfigError
from bench.models import import_robustbench
from bench.registry import MODELS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("robustbench") is None,
                                reason="the robustbench extra is not installed")


def _forget_robustbench(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("robustbench", "autoattack"):
            monkeypatch.delitem(sys.modules, name)


def test_autoattack_module_comes_from_pyautoattack(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_robustbench(monkeypatch)
    utils = import_robustbench()
    assert hasattr(utils, "load_model")
    if importlib.util.find_spec("pyautoattack") is not None:
        import robustbench.eval  # imports `from autoattack.state import EvaluationState`

        assert robustbench.eval.AutoAttack is sys.modules["autoattack"].AutoAttack


def test_missing_pkg_resources_is_a_one_line_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_robustbench(monkeypatch)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # as with setuptools >= 81
    with pytest.raises(ConfigError, match="setuptools<81"):
        import_robustbench()


def test_zoo_model_loads_offline_from_local_weights(tmp_path: Path) -> None:
    import_robustbench()  # its import shims first (pkg_resources, autoattack)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    reference = zoo["Standard"]["model"]()
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "Standard.pt")
    model = MODELS.build("robustbench:Standard", input_shape=(3, 32, 32), num_classes=10,
                         model_dir=str(tmp_path))
    assert model.pretrained
    first = next(iter(reference.state_dict()))
    assert torch.equal(model.net.state_dict()[first], reference.state_dict()[first])
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
