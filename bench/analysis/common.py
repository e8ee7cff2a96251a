"""What the per-image analysis plots share: their defenses must be preprocessors, and they all read
one oblivious adversarial set of the session's evaluated slice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from bench.config import parse_eps
from bench.defense import MODEL
from bench.errors import ConfigError
from bench.registry import DEFENSES

if TYPE_CHECKING:
    from bench.session import Session


def preprocessors(names: Sequence[str], plot: str) -> list[str]:
    """``names``, after checking that each is a preprocessing defense (one-line error naming the
    model-kind ones otherwise)."""
    whole = [n for n in names if DEFENSES.get(n).kind == MODEL]
    if whole:
        listed = ", ".join(f"'{n}'" for n in whole)
        raise ConfigError(f"Defense(s) {listed} replace the classifier (kind 'model') and "
                          f"output no denoised image x^: the {plot} plot compares "
                          f"preprocessors; drop them from --defense.")
    return list(names)


def oblivious_set(session: Session, attack: str, eps: float | str | None
                  ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """eps (the dataset's default when None), the clean slice (N x C x H x W in [0,1]) and its
    oblivious adversarial images (the attack on the undefended classifier), validated."""
    eps = parse_eps(eps) if eps is not None else session.info.default_eps
    x_adv = session.oblivious(attack, eps)
    return eps, session.test[0], x_adv
