"""The planted-example test of an attack's strength: Zimmermann, Brendel, Tramer and Carlini's
binarization test ("Increasing Confidence in Adversarial Robustness Evaluations", NeurIPS 2022,
https://arxiv.org/abs/2206.13991; reference code: google-research/active-adversarial-tests,
``active_tests/decision_boundary_binarization.py``).

For each test image ``x`` a new two-class task is built on the defended model's own features so
that an adversarial example within eps is known to exist; the attack must find one:

1. points: class 0 are ``x``, ``inner`` points drawn uniformly in the L-inf ball of radius
   ``(1 - gap) * eps`` around it (the reference's interior points) and ``outer`` random points
   on the eps-ball's boundary (half corners, half uniform points scaled out to eps); class 1 is
   one *planted* point, a random corner ``x + eps * s`` (``s`` random signs, clipped to [0,1]).
   The outer points are this harness's addition: without them, any random corner looks "more
   perturbed" than the interior points and noise solves most tasks (what we measured);
2. features: the input of the last ``nn.Linear`` the defended pipeline calls (the penultimate
   features of the classifier, or of a model defense; its output logits when it calls none),
   computed with the defense's own forward; ``eot`` passes for a randomized one, each pass a
   training row (the reference's inference repetitions);
3. readout: a linear binary classifier on those features, trained (Adam, logistic loss, both
   classes weighted equally) until its margin, averaged over the passes, separates the planted
   point from every class-0 point; centred between the two and scaled so that every training
   margin lies in [-1, 1] (the reference's "fixed" rescaling). It replaces the output of that
   linear layer, padded to the model's K logits with values below both, so every attack and
   loss (DLR, targeted APGD) takes the planted model unchanged;
4. checks: a task counts only when the planted model puts ``x`` in class 0 and the planted point
   in class 1 (else *not set up*; the reference code skips such a sample too) and none of
   ``controls`` fresh random points of the eps-ball's boundary (what noise and a random start
   try) is in class 1 (else *trivial*: a random point solves it, so it cannot tell a working
   gradient from a broken one);
5. attack: the suite's whitebox gradient members (the defense's own attacks first), built as the
   suite builds them with ``steps`` iterations, run in turn on the planted model as the
   whitebox threat sees the defense (BPDA through ``attack_forward`` where declared, EOT over
   ``eot`` draws where randomized) until one finds a point the planted model puts in class 1.

The result is the share of the informative tasks solved (the paper's attack success rate). A
randomized planted model is judged by its expected prediction (the mean of ``eot`` draws'
probabilities, fresh draws). Every draw derives from the seed and the image's index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bench.attack import Attack
from bench.defense import Defense
from bench.errors import ConfigError
from bench.runtime import progress, rng_isolated
from bench.seeds import derive_seed
from bench.suite import AttackSuite
from bench.threat import EOT, Pipeline, Threat, eot_draws

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlantedSpec:
    """The test's budget.

    Attributes:
        n: test images, one planted task each (the first ``n`` of the slice).
        steps: iterations of the suite's gradient members (its ``steps`` option).
        inner: class-0 points drawn inside the ball besides the clean image.
        outer: class-0 points drawn on the ball's boundary (half corners, half surface).
        controls: random points of the ball that must not solve a task for it to count.
        gap: class-0 points lie within ``(1 - gap) * eps``.
        fit_steps: Adam steps (at most) to train a readout.
    """

    n: int = 20
    steps: int = 20
    inner: int = 31
    outer: int = 64
    controls: int = 32
    gap: float = 0.05
    fit_steps: int = 500

    def __post_init__(self) -> None:
        for name in ("n", "steps", "inner", "outer", "controls", "fit_steps"):
            value = getattr(self, name)
            if int(value) != value or value < (0 if name in ("n", "outer", "controls") else 1):
                what = "a non-negative" if name in ("n", "outer", "controls") else "a positive"
                raise ConfigError(f"planted {name}={value!r}: use {what} integer.")
        if not 0.0 <= self.gap < 1.0:
            raise ConfigError(f"planted gap={self.gap!r}: use a fraction in [0, 1).")


class Readout(nn.Module):
    """The planted model: ``model`` with the output of its linear layer ``layer`` (None: its
    output logits) replaced by the binary readout ``margin = z . w + b`` of that layer's input
    ``z``; logits ``(-margin/2, margin/2)``, then ``classes - 2`` padding logits one below the
    lower. Images N x C x H x W in [0,1] -> logits N x ``classes``; class 1 is the planted one."""

    def __init__(self, model: nn.Module, layer: nn.Linear | None, w: torch.Tensor,
                 b: torch.Tensor, classes: int) -> None:
        super().__init__()
        self.model, self.layer, self.classes = model, layer, max(int(classes), 2)
        self.register_buffer("w", w.detach().clone())
        self.register_buffer("b", b.detach().clone())
        self.eval()  # an attack restores the mode it found, and train() reaches ``model``

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        half = (z.flatten(1).to(self.w.dtype) @ self.w + self.b) / 2
        two = torch.stack([-half, half], dim=1)
        pad = (two.min(1, keepdim=True).values - 1).expand(-1, self.classes - 2)
        return torch.cat([two, pad], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return self.logits(self.model(x))
        hook = self.layer.register_forward_hook(lambda _m, inp, _out: self.logits(inp[0]))
        try:
            return self.model(x)
        finally:
            hook.remove()


def last_linear(model: nn.Module, x: torch.Tensor) -> nn.Linear | None:
    """The last ``nn.Linear`` that a forward pass of ``model`` on ``x`` calls (None: none)."""
    called: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, _i, _o: called.append(m))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return called[-1] if called else None  # type: ignore[return-value]


def features(model: nn.Module, layer: nn.Linear | None, x: torch.Tensor,
             draws: int = 1) -> torch.Tensor:
    """The readout's input for images ``x`` (N x C x H x W in [0,1]): the input of ``layer``
    (its last call), else the output of ``model``; ``draws`` x N x D, one row per pass."""
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0])) \
        if layer is not None else None
    out = []
    try:
        with torch.no_grad():
            for _ in range(draws):
                logits = model(x)
                out.append((seen[-1] if hook is not None else logits).flatten(1).float())
    finally:
        if hook is not None:
            hook.remove()
    return torch.stack(out)


def fit_readout(z: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 0.05
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A linear readout ``(w, b)`` on features ``z`` (draws x N x D: every draw a training row)
    whose margin ``z . w + b``, averaged over the draws, separates the points with ``y == 1``
    from those with ``y == 0`` (logistic loss, classes weighted equally, Adam at ``lr`` as the
    reference code's default; a deterministic model stops at separation, a randomized one
    trains all ``steps``); centred between the two classes and scaled so that every margin of
    every draw lies in [-1, 1] (the reference's "fixed" rescaling). None when not separated."""
    mean, scale = z.flatten(0, 1).mean(0), z.flatten(0, 1).std(0).clamp_min(1e-6)
    zs = (z - mean) / scale
    w = torch.zeros(z.shape[-1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    pos, neg = y == 1, y == 0
    weight = torch.where(pos, 0.5 / pos.sum(), 0.5 / neg.sum()) / len(z)
    for step in range(steps):
        with torch.enable_grad():
            loss = (weight * nn.functional.softplus(-(2.0 * y - 1) * (zs @ w + b))).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if len(z) == 1 and step % 10 == 9 and _gap(zs @ w + b, pos, neg)[0] > 0:
            break
    with torch.no_grad():
        m = zs @ w + b
        gap, middle = _gap(m, pos, neg)
        if not gap > 0:
            return None
        k = float((m - middle).abs().max())
        wr = w / scale / k
        return wr, (b - middle) / k - (mean * wr).sum()


def _gap(m: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float]:
    """For margins ``m`` (draws x N): the gap between the lowest mean margin of ``pos`` and the
    highest of ``neg``, and the midpoint between them."""
    mean = m.detach().mean(0)
    hi, lo = float(mean[pos].min()), float(mean[neg].max())
    return hi - lo, (hi + lo) / 2


def ball(x: torch.Tensor, eps: float, k: int, kind: str) -> torch.Tensor:
    """``k`` random points of the L-inf ball of radius ``eps`` around ``x`` (1 x C x H x W),
    clipped to [0,1], from torch's RNG: ``inner`` uniform in it, ``corner`` at its corners,
    ``surface`` uniform points scaled out to its surface."""
    u = torch.rand(k, *x.shape[1:], device=x.device) * 2 - 1
    if kind == "corner":
        u = u.sign()
    elif kind == "surface":
        u = u / u.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return (x + eps * u).clamp(0, 1)


class Task:
    """One image's planted task (see the module docstring): the planted model as judged
    (``judge``) and as attacked (``attacked``), and ``planted``, the point known to be in
    class 1; ``status`` is ``ok``, ``not set up`` or ``trivial``."""

    def __init__(self, judge: Readout, attacked: nn.Module, planted: torch.Tensor,
                 status: str, draws: int, seed: int) -> None:
        self.judge_model, self.attacked, self.planted = judge, attacked, planted
        self.status, self.draws, self.seed = status, draws, seed

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The planted model's class for ``x`` (N), its expectation over ``draws`` fresh
        draws of a randomized defense (seeded from the task's seed)."""
        model = EOT(self.judge_model, self.draws) if self.draws > 1 else self.judge_model
        model.eval()
        with rng_isolated(x.device), torch.no_grad():
            torch.manual_seed(derive_seed(self.seed, "judge"))
            return model(x).argmax(1)


def plant(pipelines: tuple[nn.Module, nn.Module], x: torch.Tensor, eps: float,
          spec: PlantedSpec, draws: int, seed: int) -> Task:
    """The planted task of image ``x`` (1 x C x H x W in [0,1]) for the defended model
    ``pipelines`` = (its own forward, what the whitebox attacker differentiates)."""
    own, attacker = pipelines
    own.eval()
    with rng_isolated(x.device):
        torch.manual_seed(derive_seed(seed, "points"))
        half = spec.outer // 2
        points = torch.cat([x, ball(x, (1 - spec.gap) * eps, spec.inner, "inner"),
                            ball(x, eps, spec.outer - half, "corner"),
                            ball(x, eps, half, "surface"), ball(x, eps, 1, "corner")])
        layer = last_linear(own, x)
        with torch.no_grad():
            classes = own(x).shape[1]
        z = features(own, layer, points, draws).cpu()
        y = torch.zeros(len(points))
        y[-1] = 1
        fitted = fit_readout(z, y, spec.fit_steps)
        half = spec.controls // 2
        controls = torch.cat([ball(x, eps, spec.controls - half, "corner"),
                              ball(x, eps, half, "surface")])
    w, b = fitted if fitted is not None else (torch.zeros(z.shape[-1]), torch.zeros(()))
    device = x.device
    judge = Readout(own, layer, w.to(device), b.to(device), classes)
    attacked: nn.Module = Readout(attacker, layer, w.to(device), b.to(device), classes)
    attacked = EOT(attacked, draws).eval() if draws > 1 else attacked
    task = Task(judge, attacked, points[-1:], "not set up", draws, seed)
    if fitted is None or task.predict(torch.cat([x, points[-1:]])).tolist() != [0, 1]:
        return task
    task.status = "trivial" if len(controls) and bool((task.predict(controls) == 1).any()) \
        else "ok"
    return task


def gradient_members(suite: AttackSuite, defense: Defense) -> Iterator[tuple[str, Attack]]:
    """The suite's members that differentiate the defended model (whitebox, not gradient-free),
    the defense's own attacks first: (label, attack)."""
    for m in suite.plan(defense):
        attack = suite.member(m)
        if Threat(m.threat) is Threat.WHITEBOX and not attack.gradient_free:
            yield m.label, attack


def solve(task: Task, x: torch.Tensor, members: list[tuple[str, Attack]]) -> str | None:
    """The label of the first of ``members`` whose adversarial example for ``x`` the planted
    model of ``task`` puts in class 1 (None: none did); each member's seed derives from the
    task's."""
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    for label, attack in members:
        x_adv = attack(task.attacked, x, zero, seed=derive_seed(task.seed, label))
        if int(task.predict(x_adv)[0]) == 1:
            return label
    return None


def planted_test(classifier: nn.Module, defense: Defense, images: torch.Tensor, eps: float,
                 suite: AttackSuite, spec: PlantedSpec, eot: int, seed: int) -> dict[str, Any]:
    """Run the test on the first ``spec.n`` of ``images`` (N x C x H x W in [0,1], on the
    device of ``classifier`` and ``defense``) for ``classifier`` behind ``defense``; ``eot``:
    draws through a randomized defense. Returns the figures ``bench audit`` stores: ``value``
    (solved / informative tasks), the counts, how many each member solved, the wall time."""
    t0 = time.perf_counter()
    draws = eot_draws(Threat.WHITEBOX, defense, eot)
    pipelines = (Pipeline(classifier, defense), Pipeline(classifier, defense, adaptive=True))
    members = list(gradient_members(suite, defense))
    counts = {"ok": 0, "not set up": 0, "trivial": 0}
    solved = dict.fromkeys((label for label, _ in members), 0)
    n = min(spec.n, len(images))
    for i in progress(range(n), desc="planted examples", total=n):
        x = images[i:i + 1]
        task = plant(pipelines, x, eps, spec, draws, derive_seed(seed, "planted", i))
        counts[task.status] += 1
        label = solve(task, x, members) if task.status == "ok" else None
        if label is not None:
            solved[label] += 1
    found, informative = sum(solved.values()), counts["ok"]
    through = ("BPDA" if not defense.differentiable and not defense.identity
               else "the defense's own gradient") + (f" with EOT ({draws} draws)"
                                                     if draws > 1 else "")
    seconds = time.perf_counter() - t0
    log.info("planted examples: %d of %d informative tasks solved (%d not set up, %d trivial) "
             "in %.1f s", found, informative, counts["not set up"], counts["trivial"], seconds)
    return {"value": found / max(informative, 1), "found": found, "informative": informative,
            "n": n, "not_set_up": counts["not set up"], "trivial": counts["trivial"],
            "by_member": solved, "suite": suite.name, "through": through, "eot": draws, "eps": eps,
            "seconds": round(seconds, 2), "spec": asdict(spec)}
