"""The adaptive suite: the per-image worst case over diverse attacks, run as one attack.

What a careful reviewer runs against a defense (Carlini et al., "On Evaluating Adversarial
Robustness", 2019, https://arxiv.org/abs/1902.06705; Tramer, Carlini, Brendel and Madry, "On
Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020,
https://arxiv.org/abs/2002.08347), in this order, each attack only on the images that every
earlier one failed on (:mod:`bench.suite`):

1. the defense's own attacks (``Defense.adaptive_attacks``), if it registered any;
2. APGD-CE and 3. APGD-DLR (Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690),
   ``steps`` iterations each;
4. APGD-T, targeted DLR towards the 9 highest-ranked wrong classes, ``steps`` each;
5. PGD with a large step (``eps/4``) and ``restarts`` random restarts, ``steps`` iterations;
6. Square (Andriushchenko et al., ECCV 2020), ``n_queries`` queries, gradient-free;
7. transfer: APGD-CE crafted on the source model (``--source-model``), not knowing the defense;
8. random-sign noise of size eps (the control).

Gradient members attack the defended pipeline: through BPDA where the defense declares it
non-differentiable, through EOT (``eot`` draws; None: the run's ``--eot``, default 20) where it
is randomized. Defaults are the standard version's budgets (100 iterations, 5000 Square queries,
9 target classes; AutoAttack's rand version's 20 EOT draws); shrink them for a CPU run, e.g.
``--attack-opt adaptive.steps=20 --attack-opt adaptive.n_queries=500``. The stored cell is the
per-image worst case over the members (an image is robust only when correct clean and under
every member) and records, per image, the member that broke it first.

Norm: L-inf. Inputs: images N x C x H x W in [0,1], labels N; output has the same shape and range.

Arguments:
    eps: L-inf radius on the [0,1] scale.
    alpha: must be None; targeted: must be None (the members choose their own).
    seed: seed of every member's randomness.
    steps: iterations of the APGD members and of PGD (default 100).
    restarts: PGD's random restarts (default 5).
    n_queries: Square's query budget (default 5000).
    eot: EOT draws through a randomized defense (default None: ``--eot``).

Example::

    python -m bench run --attack adaptive --dataset mnist --defense dunet --eps 0.2
"""

from __future__ import annotations

from bench.attacks._common import check_steps
from bench.registry import register_attack
from bench.suite import AttackSuite, Member
from bench.threat import Threat


@register_attack("adaptive")
class Adaptive(AttackSuite):
    """APGD-CE, APGD-DLR, APGD-T, PGD with restarts, Square, transfer and noise, on survivors.

    Args:
        eps: L-inf radius on the [0,1] scale.
        alpha: must be None.
        targeted: must be None.
        seed: seed of the members' randomness.
        steps: iterations of the APGD members and of PGD.
        restarts: PGD's random restarts.
        n_queries: Square's query budget.
        eot: EOT draws through a randomized defense (None: the run's ``--eot``).

    Example: ``python -m bench run --defense dunet --attack adaptive``
    """

    def __init__(self, eps: float, alpha: float | None = None, targeted: str | None = None,
                 seed: int = 0, steps: int = 100, restarts: int = 5, n_queries: int = 5000,
                 eot: int | None = None) -> None:
        super().__init__(eps, alpha, targeted, seed)
        self.steps = check_steps(steps)
        self.restarts = check_steps(restarts, "restarts")
        self.n_queries = check_steps(n_queries, "n_queries")
        self.eot = None if eot is None else check_steps(eot, "eot")

    def members(self) -> list[Member]:
        steps = {"steps": self.steps}
        large_step = {**steps, "alpha": self.eps / 4 or None, "restarts": self.restarts}
        return [
            Member("apgd-ce", "apgd", steps),
            Member("apgd-dlr", "apgd-dlr", steps),
            Member("apgd-t", "apgd-t", steps),
            Member("pgd-restarts", "pgd10", large_step),
            Member("square", "square", {"n_queries": self.n_queries}),
            Member("transfer", "apgd", steps, Threat.TRANSFER),
            Member("noise", "noise"),
        ]
