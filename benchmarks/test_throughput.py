"""How fast the harness's grids run, side by side with what they save:

* an oblivious grid of D defenses x A attacks against attacking once per defense (the set is
  crafted once on the classifier and shared: target speed-up >= 0.8 x D);
* attack throughput as achieved FLOP/s (``torch.utils.flop_counter``) over this machine's
  measured fp32 matmul rate, for PGD on the MNIST CNN and through a U-net defense (dunet) at
  several batch sizes (targets: >= 0.5 for the CNN, >= 0.6 through the U-net);
* the adaptive suite against one APGD-CE run on the same defense (target <= 3x: its members
  attack only the survivors);
* attacking only the survivors (whitebox PGD-100 through a defense) against attacking every
  image, on an adversarially trained model (at-pgd) and a denoiser (lgd).

MNIST when its files are there, else (and at the tiny size) the embedded digits.
``--bench-weights ~/.cache/bench`` reuses trained weights (at-pgd takes minutes to train here).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.accel import attack_step, candidates, probe_batch_size
from bench.cache import Cache
from bench.config import RunConfig
from bench.executors import run_grid
from bench.runtime import resolve_device
from bench.session import Session
from bench.session.adversarial import AdversarialSets
from bench.store import Store
from benchmarks.test_pgd_overhead import _dataset

EPS = 0.2


def _run(cfg: RunConfig, scratch: Path, cache: Cache, fresh_sets: bool = True) -> float:
    """Seconds to run ``cfg`` into a new store (adversarial sets crafted again unless not
    ``fresh_sets``; weights cached)."""
    if fresh_sets:
        shutil.rmtree(cache.root / "adversarial", ignore_errors=True)
    store = scratch / "grid.sqlite"
    store.unlink(missing_ok=True)
    t0 = time.perf_counter()
    run_grid(cfg, Store(store), cache)
    return time.perf_counter() - t0


def test_an_oblivious_grid_crafts_each_set_once_for_every_defense(
        report: Any, scratch: Path) -> None:
    dataset, n = ("digits", 40) if report.tiny else (_dataset(), 500)
    defenses = ("none", "bitdepth", "median", "jpeg")
    attacks = ("pgd100",) if not report.tiny else ("pgd10",)
    cache = Cache(scratch / "cache")
    base = dict(datasets=(dataset,), attacks=attacks, threats=("oblivious",), eps=(EPS,), n=n,
                device=report.device)
    Session.for_config(RunConfig(**base), dataset, cache=cache).classifier  # noqa: B018
    grid = _run(RunConfig(**base, defenses=defenses), scratch, cache)
    alone = sum(_run(RunConfig(**base, defenses=(d,)), scratch, cache) for d in defenses[1:])
    alone += _run(RunConfig(**base, defenses=("none",)), scratch, cache)
    d = len(defenses)
    speedup = alone / grid
    report.ratio(f"oblivious grid speed-up, {d} defenses x {len(attacks)} attack ({dataset}, "
                 f"n={n})", speedup, f">= {0.8 * d:.1f} (0.8 x D)", speedup >= 0.8 * d,
                 f"grid {grid:.1f} s; each defense alone, attacking again: {alone:.1f} s")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def matmul_rate(size: int = 1024, repeats: int = 20, device: torch.device = CPU) -> float:
    """This machine's fp32 matmul FLOP/s (the best of a few timed rounds)."""
    a, b = torch.rand(size, size, device=device), torch.rand(size, size, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 * repeats / best


def pgd_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """(FLOP/s achieved, FLOPs per step) of ``steps`` PGD steps (forward, CE, input gradient)
    of ``model`` on ``x``, the harness's PGD (``pgd10``'s steps, the whole batch)."""
    from bench.registry import ATTACKS

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # an attack differentiates the input only
        p.requires_grad_(False)
    try:
        xg = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            nn.functional.cross_entropy(model(xg), y, reduction="sum").backward()
    finally:
        for p in params:
            p.requires_grad_(True)
    per_step = counter.get_total_flops()
    attack = ATTACKS.build("pgd10", eps=EPS, steps=steps)
    attack(model, x, y, seed=0)  # warm-up
    best = float("inf")
    for _ in range(2):
        _sync(x.device)
        t0 = time.perf_counter()
        attack(model, x, y, seed=0)
        _sync(x.device)
        best = min(best, time.perf_counter() - t0)
    return per_step * steps / best, per_step


def test_attack_throughput_against_the_machines_matmul_rate(
        report: Any, scratch: Path) -> None:
    dataset = "digits" if report.tiny else _dataset()
    session = Session(dataset, n=64 if report.tiny else 1000, cache=Cache(scratch / "cache"),
                      device=resolve_device(report.device))
    cnn = session.classifier.eval()
    dunet = session.built("dunet").eval()  # throughput does not depend on its weights
    through = nn.Sequential(dunet, cnn).eval()
    peak = matmul_rate(256 if report.tiny else 1024, 2 if report.tiny else 20, session.device)
    x, y = (t.to(session.device) for t in session.test)
    steps = 2 if report.tiny else 10
    cases: list[tuple[str, nn.Module, int | str, float]] = [
        ("cnn", cnn, 250, 0.5), ("cnn", cnn, "auto", 0.5), ("dunet + cnn", through, 64, 0.6),
        ("dunet + cnn", through, 250, 0.6), ("dunet + cnn", through, 1000, 0.6),
        ("dunet + cnn", through, "auto", 0.6)]
    for name, model, asked, target in cases:
        if asked == "auto":  # what --batch-size auto chooses for this pipeline here
            step = attack_step(model, session.info.input_shape, session.info.num_classes,
                               session.device)
            asked = probe_batch_size({name: step}, candidates(len(x), session.device),
                                     session.device)["chosen"]
            name = f"{name} (--batch-size auto)"
        batch = min(int(asked), len(x))
        rate, flops = pgd_rate(model, x[:batch], y[:batch], steps)
        report.ratio(f"PGD FLOP/s / fp32 matmul rate, {name}, batch {batch}", rate / peak,
                     f">= {target}", rate / peak >= target,
                     f"{rate / 1e9:.1f} GFLOP/s achieved ({flops / batch / 1e6:.1f} MFLOP per "
                     f"image-step) vs {peak / 1e9:.1f} GFLOP/s matmul, "
                     f"{torch.get_num_threads()} threads")


def test_the_adaptive_suite_costs_at_most_three_apgd_ce_runs(
        report: Any, scratch: Path) -> None:
    tiny = report.tiny
    dataset, n = ("digits", 30) if tiny else (_dataset(), 300)
    cache = Cache(scratch / "cache")
    for defense in (("bitdepth",) if tiny else ("at-pgd", "lgd")):
        small = {"steps": 5} if tiny else {}
        base = dict(datasets=(dataset,), defenses=(defense,), eps=(EPS,), n=n,
                    device=report.device, threats=("whitebox",))
        apgd = RunConfig(**base, attacks=("apgd",), attack_opts=small)
        run_grid(apgd, Store(scratch / "warm.sqlite"), cache)  # fits outside the timings
        suite = _run(RunConfig(**base, attacks=("adaptive",),
                               attack_opts={**small, **({"n_queries": 20} if tiny else {})}),
                     scratch, cache)
        one = _run(apgd, scratch, cache)
        ratio = suite / one
        report.ratio(f"adaptive suite / one APGD-CE, {defense} ({dataset}, n={n})", ratio,
                     "<= 3", ratio <= 3, f"{suite:.1f} s vs {one:.1f} s (whole runs)")


def test_attacking_only_the_survivors_saves_the_images_wrong_clean(
        report: Any, scratch: Path, monkeypatch: Any) -> None:
    tiny = report.tiny
    dataset, n = ("digits", 60) if tiny else (_dataset(), 500)
    attack = "pgd10" if tiny else "pgd100"
    cache = Cache(scratch / "cache")
    craft = AdversarialSets.craft

    def everything(self: AdversarialSets, attack: Any, target: Any, x: Any, y: Any, seed_of: Any,
                   keep: Any = None, **kw: Any) -> Any:
        return craft(self, attack, target, x, y, seed_of, None, **kw)

    for defense in (("bitdepth",) if tiny else ("at-pgd", "lgd")):
        cfg = RunConfig(datasets=(dataset,), defenses=(defense,), attacks=(attack,),
                        threats=("whitebox",), eps=(EPS,), n=n, device=report.device)
        _run(cfg, scratch, cache)  # trains (or loads) the defense outside the timings
        survivors = _run(cfg, scratch, cache)
        frame = Store(scratch / "grid.sqlite").frame()
        row = frame[frame["defense"] == defense].iloc[0]
        with monkeypatch.context() as m:
            m.setattr(AdversarialSets, "craft", everything)
            whole = _run(cfg, scratch, cache)
        report.ratio(f"attack every image / only the survivors, {defense} {attack} whitebox",
                     whole / survivors, f">= n/attacked = {n / row['metadata']['attacked']:.3f}",
                     None, f"{whole:.1f} s vs {survivors:.1f} s; clean accuracy "
                     f"{row['clean_acc']:.3f}: {row['metadata']['attacked']} of {n} attacked")
