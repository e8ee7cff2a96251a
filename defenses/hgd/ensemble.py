"""Ensembles of denoisers and classifiers: HGD's Appendix C (Table 9).

Paper: Liao et al., "Defense against Adversarial Attacks Using High-Level Representation Guided
Denoiser", arXiv version, Appendix C. Two LGDs, LGD1 trained against IncV3 and LGD2 against
ensV3, are combined with the two classifiers in five ways, logits averaged:

================================  =========================================  ==================
Table 9 row                       here (the dataset's models, target first)  registered as
================================  =========================================  ==================
IncV3&ensV3                       ``denoisers=none targets=all``             ``ensemble-targets``
LGD1->IncV3&ensV3                 ``denoisers=lgd targets=all``              ``ensemble-shared``
(LGD1->..)&(LGD2->..)             ``denoisers=lgd@all combine=logits``       ``ensemble-cross``
LGD1&LGD2->IncV3&ensV3            ``denoisers=lgd@all combine=images``       ``ensemble-images``
(LGD1->IncV3)&(LGD2->ensV3)       ``denoisers=lgd@all combine=pairs``        ``ensemble``
================================  =========================================  ==================

(The last is the paper's best row and this plugin's default.) A part ``NAME`` is the registered
defense trained against the row's classifier, exactly as it runs alone (same options, same
cached weights); ``NAME@MODEL`` is the same defense trained against the dataset's model
``MODEL`` (Table 4's setting); ``NAME@all`` is one ``NAME`` per target model, each trained
against it (LGD1, LGD2). ``targets=all`` is the dataset's models, the row's first; ``targets``
may also list models by name. The harness fits (or loads) every part and hands it over
(:meth:`bench.defense.Defense.parts`); this plugin trains nothing itself.

Combination, for an input ``x``, denoisers ``D_i`` and classifiers ``f_j``:

* ``logits``: mean over every (i, j) of ``f_j(D_i(x))``;
* ``images``: mean over j of ``f_j(mean_i D_i(x))`` (the denoised images averaged);
* ``pairs``: mean over i of ``f_i(D_i(x))`` (as many denoisers as targets).

The ensemble replaces the classifier (kind ``model``), so under the oblivious threat the attack
is crafted on the row's classifier alone, as Table 9's test sets are crafted on IncV3; under
whitebox the attacker differentiates the whole ensemble, through each part's own
``attack_forward`` (BPDA where a part declares it). Randomized when a part is.

Scaled: the paper's IncV3/ensV3 on ImageNet become the dataset's models (on MNIST ``cnn`` and
``cnn3x3``, the latter trained normally, not ensemble-adversarially); recorded in every row.

Example: ``python -m bench run --dataset mnist --defense lgd,ensemble,ensemble-targets
--attack pgd100 --eps 0.2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench.config import split_list
from bench.defense import MODEL, PREPROCESSOR, Defense, Parts, split_spec
from bench.errors import ConfigError
from bench.registry import DEFENSES, register_defense

COMBINE = ("logits", "images", "pairs")
ALL = "all"


def _names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    items = tuple(split_list(value) if isinstance(value, str) else value)
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"ensemble {what}={value!r}: give a comma-separated list of names, e.g. "
                          f"lgd,lgd@cnn3x3.")
    return tuple(v.strip() for v in items)


@register_defense("ensemble", description="HGD App. C: (LGD_i -> f_i), logits averaged "
                  "(Table 9's best)")
@register_defense("ensemble-targets", denoisers="none", combine="logits",
                  description="HGD App. C: the dataset's classifiers, logits averaged, no denoiser")
@register_defense("ensemble-shared", denoisers="lgd", combine="logits",
                  description="HGD App. C: one LGD in front of every classifier, logits averaged")
@register_defense("ensemble-cross", combine="logits",
                  description="HGD App. C: every LGD_i into every classifier, logits averaged")
@register_defense("ensemble-images", combine="images",
                  description="HGD App. C: LGD_i images averaged, then every classifier")
class Ensemble(Defense):
    """Denoisers and classifiers combined as in HGD's Appendix C (see the module docstring).

    Args:
        input_shape, num_classes: the dataset's image shape and classes.
        denoisers: parts, comma-separated (or a list): ``NAME``, ``NAME@MODEL`` or ``NAME@all``
            (default ``lgd@all``: one LGD per target, each trained against it).
        targets: classifiers, comma-separated model names or ``all`` (default: the dataset's).
        combine: ``logits``, ``images`` or ``pairs`` (default ``pairs``).
        model: the row's classifier (set by the harness).
    """

    kind = MODEL

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 denoisers: str | Sequence[str] = "lgd@all", targets: str | Sequence[str] = ALL,
                 combine: str = "pairs", model: str | None = None) -> None:
        super().__init__(input_shape, num_classes)
        if combine not in COMBINE:
            raise ConfigError(f"ensemble combine={combine!r}: use one of {', '.join(COMBINE)}.")
        self.denoisers, self.targets = _names(denoisers, "denoisers"), _names(targets, "targets")
        self.combine, self.model = combine, model
        builders = []
        for spec in self.denoisers:
            base = split_spec(spec)[0]
            builder = DEFENSES.get(base).builder  # an unknown name: one line with close names
            if getattr(builder, "kind", PREPROCESSOR) != PREPROCESSOR:
                raise ConfigError(f"ensemble denoisers: {base} is a whole classifier; give "
                                  f"preprocessors (e.g. lgd, dunet, none).")
            builders.append(builder)
        # known before the parts exist: the harness plans EOT and evaluation draws from them
        self.randomized = any(b.randomized and not b.identity for b in builders)
        self.differentiable = all(b.differentiable for b in builders)
        self.parts_: nn.ModuleList = nn.ModuleList()
        self.models_: nn.ModuleList = nn.ModuleList()

    def parts(self, models: Sequence[str]) -> Parts:
        """The denoisers and classifiers, ``all`` expanded over ``models`` (target first)."""
        targets = tuple(models) if self.targets == (ALL,) else self.targets
        own = self.model or (targets[0] if targets else None)
        parts: list[str] = []
        for spec in self.denoisers:
            base, guide = split_spec(spec)
            parts += ([f"{base}@{t}" if t != own else base for t in targets] if guide == ALL
                      else [spec])
        if self.combine == "pairs" and len(parts) != len(targets):
            raise ConfigError(f"ensemble combine=pairs needs one denoiser per target: "
                              f"{len(parts)} denoisers ({','.join(parts)}) for {len(targets)} "
                              f"targets ({','.join(targets)}); use denoisers=NAME@all.")
        return Parts(tuple(parts), targets)

    def compose(self, defenses: Sequence[Defense], models: Sequence[nn.Module]) -> None:
        """Take the fitted denoisers and the classifiers, in :meth:`parts` order."""
        self.parts_, self.models_ = nn.ModuleList(defenses), nn.ModuleList(models)
        for p in self.models_.parameters():
            p.requires_grad_(False)

    def _logits(self, x: torch.Tensor, attack: bool) -> torch.Tensor:
        if not len(self.parts_) or not len(self.models_):
            raise ConfigError("ensemble: its parts are missing; the harness composes them (run it "
                              "through python -m bench run, or call compose()).")
        images = [d.attack_forward(x) if attack else d(x) for d in self.parts_]
        if self.combine == "images":
            mean = torch.stack(images).mean(0)
            outs = [f(mean) for f in self.models_]
        elif self.combine == "pairs":
            outs = [f(xi) for f, xi in zip(self.models_, images, strict=True)]
        else:
            outs = [f(xi) for xi in images for f in self.models_]
        return torch.stack([o.float() for o in outs]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Averaged logits N x K for images ``x`` (N x C x H x W in [0,1])."""
        return self._logits(x, attack=False)

    def attack_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same average through each part's ``attack_forward`` (BPDA where declared)."""
        return self._logits(x, attack=True)

    def metadata(self) -> dict[str, Any]:
        """How the parts combine, and what was scaled from the paper."""
        return {"combine": self.combine, "denoisers": list(self.denoisers),
                "targets": list(self.targets),
                "scaled_from_paper": "the dataset's models in place of IncV3 and ensV3 "
                                     "(ImageNet; ensV3 is ensemble-adversarially trained)"}
