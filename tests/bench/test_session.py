"""Session: the target classifier's name reaches defenses whose constructor takes ``model``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bench.defense import MODEL, Defense
from bench.registry import DEFENSES, Entry
from bench.session import Session


class SameArchitecture(Defense):
    """A throwaway model defense that wants the target's architecture name."""

    kind = MODEL

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 model: str = "default") -> None:
        super().__init__(input_shape, num_classes)
        self.model = model


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> str:
    DEFENSES.load()
    monkeypatch.setitem(DEFENSES._entries, "tmp-same-arch", Entry("tmp-same-arch",
                                                                  SameArchitecture))
    monkeypatch.setitem(DEFENSES._entries, "tmp-fixed-arch", Entry(
        "tmp-fixed-arch", SameArchitecture, {"model": "fixed"}))
    return "tmp-same-arch"


def test_the_target_model_name_is_passed_as_model(registered: str) -> None:
    assert Session("digits", "cnn3x3").defense_params(registered)["model"] == "cnn3x3"
    assert Session("digits").defense_params(registered)["model"] == "cnn"  # dataset default


def test_an_option_or_a_variant_setting_wins(registered: str) -> None:
    s = Session("digits", "cnn3x3", defense_opts={f"{registered}.model": "cnn"})
    assert s.defense_params(registered)["model"] == "cnn"
    assert Session("digits", "cnn3x3").defense_params("tmp-fixed-arch")["model"] == "fixed"


def test_defenses_without_a_model_parameter_get_none(registered: str) -> None:
    assert "model" not in Session("digits", "cnn3x3").defense_params("none")
