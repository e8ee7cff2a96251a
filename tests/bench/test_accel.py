"""GPU paths (bench.accel): precision scopes, copies, memory format, determinism, --batch-size
auto. Everything that can run on CPU runs here; the CUDA-only checks are marked ``gpu``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench import accel
from bench.accel import (
    NondeterminismLog,
    candidates,
    precision_scope,
    probe_batch_size,
    to_device,
)
from bench.cache import Cache
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.executors import run_grid
from bench.plan import Planner
from bench.session import Session
from bench.store import Store
from bench.threat import Target, Threat

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
QUICK = {"epochs": 1}  # the classifier's recipe: one epoch is enough to compare runs
TRAINED = "dae"  # a trainable preprocessor (HGD's pixel-guided denoiser)


# -- precision ---------------------------------------------------------------------------------
def test_precision_scopes_autocast_only_bf16_and_restore_the_state_around_them() -> None:
    lin, x = nn.Linear(4, 3), torch.rand(2, 4)
    with precision_scope(CPU, "bf16"):
        assert lin(x).dtype == torch.bfloat16
        with precision_scope(CPU, "fp32"):  # a lazily trained classifier inside a bf16 fit
            assert lin(x).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
    with precision_scope(CPU, "tf32"):
        assert lin(x).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp32, tf32, bf16"):
        with precision_scope(CPU, "fp16"):
            pass


def test_a_training_scope_makes_every_step_use_the_current_weights() -> None:
    """Autocast caches the bf16 cast of each weight for as long as its outermost block; a scope
    around a whole fit must not, or every forward pass uses the first step's weights."""

    def train(training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        lin, x = nn.Linear(8, 1, bias=False), torch.rand(16, 8)
        opt = torch.optim.SGD(lin.parameters(), lr=1.0)
        with precision_scope(CPU, "bf16", training=training):
            for _ in range(3):
                loss = lin(x).float().pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            inside = lin(x).float()
        fresh = (x.bfloat16() @ lin.weight.detach().bfloat16().T).float()
        return inside, fresh

    inside, fresh = train(training=True)
    assert torch.allclose(inside, fresh)
    stale, fresh = train(training=False)  # what a plain autocast block around a fit does
    assert not torch.allclose(stale, fresh)


def test_train_precision_is_in_the_weight_key_only_when_not_fp32() -> None:
    fp32 = Session("digits", n=20, model_opts=QUICK)
    bf16 = Session("digits", n=20, model_opts=QUICK, train_precision="bf16")
    assert "precision" not in fp32.models.fit_key() and bf16.models.fit_key()["precision"] == "bf16"
    name = TRAINED
    assert fp32.defense_id(name)["weights"] != bf16.defense_id(name)["weights"]
    assert fp32.models.fit_context(name).precision == "fp32"
    assert bf16.models.fit_context(name).precision == "bf16"


def test_attack_precision_is_recorded_in_the_cell_and_its_set(tmp_path: Path) -> None:
    base = {"datasets": ("digits",), "defenses": ("none",), "attacks": ("fgsm",), "n": 20,
            "eps": (0.2,), "threats": ("oblivious",), "model_opts": QUICK}
    cache = Cache(tmp_path / "cache")
    fp32 = Planner(RunConfig(**base), cache)
    bf16 = Planner(RunConfig(**base, attack_precision="bf16"), cache)
    (c32,), (c16,) = (r.plan(r.sessions()[0], "none") for r in (fp32, bf16))
    assert "attack_precision" not in c32.config and c16.config["attack_precision"] == "bf16"
    assert c32.hash != c16.hash
    s16 = bf16.sessions()[0]
    assert s16.sets.key(c16.attack, Target(Threat.OBLIVIOUS))["precision"] == "bf16"


def test_attacks_run_at_the_precision_asked_and_evaluation_stays_fp32() -> None:
    seen: list[torch.dtype] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.lin(x.flatten(1))
            seen.append(out.dtype)
            return out

    s = Session("digits", n=10, model_opts=QUICK, attack_precision="bf16")
    x, y = s.test
    attack = s.attack("fgsm", 0.1)
    model = Spy()
    adv = s.sets.craft(attack, model, x[:, :, :8, :8].reshape(10, 1, 8, 8), y, lambda i: i)
    assert seen and set(seen) == {torch.bfloat16}
    assert adv.dtype == torch.float32
    out: list[torch.dtype] = []
    s.classifier.register_forward_hook(lambda m, i, o: out.append(o.dtype))
    with precision_scope(CPU, "bf16"):  # strict fp32 whatever the caller's scope
        s.evaluate(s.defense("none"), x, seed=0)
    assert out and set(out) == {torch.float32}


# -- copies and memory format ------------------------------------------------------------------
def test_to_device_on_cpu_is_a_plain_copy_with_channels_last_on_request() -> None:
    x = torch.rand(2, 3, 5, 5)
    assert to_device(x, CPU) is x
    cl = to_device(x, CPU, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    assert to_device(torch.arange(3), CPU, channels_last=True).is_contiguous()


def test_channels_last_leaves_the_cells_flags_and_is_recorded(tmp_path: Path) -> None:
    base = {"datasets": ("digits",), "defenses": ("none", "bitdepth"), "attacks": ("pgd10",),
            "n": 40, "eps": (0.2,), "model_opts": QUICK}
    cache = Cache(tmp_path / "cache")
    plain, cl = Store(tmp_path / "a.sqlite"), Store(tmp_path / "b.sqlite")
    h1 = run_grid(RunConfig(**base), plain, cache)
    h2 = run_grid(RunConfig(**base, channels_last=True), cl, cache)
    assert h1 == h2  # an execution setting, like the device: not in the hash
    a, b = (s.frame().set_index("config_hash") for s in (plain, cl))
    for h in h1:
        assert (a.loc[h, "robust_correct"] == b.loc[h, "robust_correct"]).all()
        assert b.loc[h, "metadata"]["execution"]["channels_last"] is True
        assert a.loc[h, "metadata"]["execution"]["channels_last"] is False


def test_a_channels_last_session_converts_the_models_it_runs() -> None:
    s = Session("digits", n=10, model_opts=QUICK, channels_last=True)
    s.evaluate(s.defense("none"), s.test[0], seed=0)
    convs = [m for m in s.classifier.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                         for c in convs)
    assert s.execution()["channels_last"] is True


@pytest.mark.slow
def test_a_bf16_fit_trains_as_well_as_fp32(tmp_path: Path) -> None:
    """A defense fitted under bf16 autocast is as good as in fp32 (a fit inside one autocast
    block with its weight cast cache on scored 6% clean instead of 94%)."""
    clean = {}
    for p in ("fp32", "bf16"):
        s = Session("digits", n=200, cache=Cache(tmp_path / "cache"), train_precision=p,
                    fit_images=400)
        ok, _ = s.evaluate(s.defense(TRAINED), s.test[0], seed=0)
        clean[p] = float(ok.float().mean())
        assert s.fit_meta(TRAINED).get("precision") == (None if p == "fp32" else p)
    assert clean["bf16"] > clean["fp32"] - 0.05, clean


# -- determinism -------------------------------------------------------------------------------
def test_determinism_changes_nothing_on_cpu() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    assert accel.configure_determinism(CPU, True) == {"deterministic": True}
    assert torch.are_deterministic_algorithms_enabled() == before


def test_determinism_on_cuda_sets_cudnn_cublas_and_torch_and_strict_fp32(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch sets process-wide flags only (no CUDA call), so it runs here; every flag
    is put back afterwards."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), accel._tf32())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        cudnn.benchmark = True
        got = accel.configure_determinism(torch.device("cuda"), True)
        assert got == {"deterministic": True, "cublas_workspace": accel.CUBLAS_WORKSPACE}
        assert not cudnn.benchmark and cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # recorded, not raised
        assert accel._tf32() in (("ieee", "ieee"), ("False", "False"))
        accel.configure_determinism(torch.device("cuda"), False)
        assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        accel._restore_tf32(saved[4])


def test_the_nondeterminism_log_records_torch_warnings_and_passes_others_on() -> None:
    log = NondeterminismLog()
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with log.watch():
            warnings.warn("index_add_cuda_ does not have a deterministic implementation, but "
                          "you set 'torch.use_deterministic_algorithms(True, warn_only=True)'",
                          UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert log.ops == ["index_add_cuda_"]
    assert [str(w.message) for w in outer] == ["something else"]
    off = NondeterminismLog(active=False)  # deterministic mode off: torch's warnings as they are
    with pytest.warns(UserWarning, match="deterministic"), off.watch():
        warnings.warn("x does not have a deterministic implementation", UserWarning,
                      stacklevel=1)
    assert off.ops == []


# -- --batch-size auto -------------------------------------------------------------------------
def test_candidates_double_up_to_the_slice() -> None:
    assert candidates(300, CPU) == [8, 16, 32, 64, 128, 256, 512]
    assert candidates(64, CPU) == [8, 16, 32, 64]
    assert candidates(5, CPU) == [8]
    assert candidates(50000, CPU)[-1] == accel.CPU_MAX_BATCH
    assert candidates(50000, torch.device("cuda"))[-1] == accel.MAX_BATCH


class FakeClock:
    """A timer that advances by the cost of each step: ``per_image(batch)`` seconds per image."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_step(clock: FakeClock, per_image: Any, oom_above: int | None = None) -> Any:
    def step(b: int) -> None:
        if oom_above is not None and b > oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        clock.now += b * per_image(b)
    return step


def test_the_probe_picks_the_best_throughput_that_every_pipeline_reaches() -> None:
    clock = FakeClock()
    sizes = [8, 16, 32, 64, 128, 256]
    steps = {"light": fake_step(clock, lambda b: 1.0 / min(b, 256)),  # faster up to 256
             "heavy": fake_step(clock, lambda b: 1.0 / min(b, 64) if b <= 64 else 1 / 40)}
    out = probe_batch_size(steps, sizes, CPU, timer=clock, min_time=0)
    assert out["chosen"] == 64  # the heavy pipeline is at its best there; light is not alone
    heavy = [r["batch"] for r in out["probe"]["heavy"]]
    assert heavy == [8, 16, 32, 64, 128]  # stopped once past its peak


def test_the_probe_recovers_from_out_of_memory_and_records_it() -> None:
    clock = FakeClock()
    steps = {"net": fake_step(clock, lambda b: 1.0 / b, oom_above=32)}
    out = probe_batch_size(steps, [8, 16, 32, 64, 128], CPU, timer=clock, min_time=0)
    assert out["chosen"] == 32
    assert out["probe"]["net"][-1] == {"batch": 64, "oom": True}
    with pytest.raises(ConfigError, match="not even a batch of 8"):
        probe_batch_size({"net": fake_step(clock, lambda b: 1.0, oom_above=4)}, [8, 16], CPU,
                         timer=clock, min_time=0)


def test_batch_size_auto_is_resolved_recorded_cached_and_reproducible(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"datasets": ("digits",), "defenses": ("none", "bitdepth"), "attacks": ("fgsm",),
            "n": 50, "eps": (0.2,), "model_opts": QUICK}
    cache = Cache(tmp_path / "cache")
    store = Store(tmp_path / "r.sqlite")
    hashes = run_grid(RunConfig(**base, batch_size="auto"), store, cache)
    rows = store.frame()
    chosen = {r["config"]["batch_size"] for _, r in rows.iterrows()}
    assert len(chosen) == 1 and isinstance(next(iter(chosen)), int)
    b = next(iter(chosen))
    assert 1 <= b <= 50
    record = rows.iloc[0]["metadata"]["execution"]["batch_size"]
    assert record["requested"] == "auto" and record["chosen"] == b
    assert set(record["probe"]) == {"classifier", "bitdepth"}

    def no_probe(*a: Any, **k: Any) -> None:
        raise AssertionError("probed again although the choice is cached")

    monkeypatch.setattr("bench.session.batch.probe_batch_size", no_probe)
    again = Store(tmp_path / "again.sqlite")
    assert run_grid(RunConfig(**base, batch_size="auto"), again, cache) == hashes
    # the number the row records reproduces every cell: same hashes, nothing left to run
    assert run_grid(RunConfig(**base, batch_size=b), store, cache) == hashes
    assert len(store.frame()) == len(rows)


def test_batch_size_parsing() -> None:
    assert RunConfig(batch_size="auto").batch_size == "auto"
    assert RunConfig(batch_size=" AUTO ").batch_size == "auto"
    assert RunConfig(batch_size="64").batch_size == 64
    for bad in ("big", 0, -3, 2.5):
        with pytest.raises(ConfigError, match="batch"):
            RunConfig(batch_size=bad)
    with pytest.raises(ConfigError, match="--train-precision"):
        RunConfig(train_precision="fp16")
    with pytest.raises(ConfigError, match="channels_last"):
        RunConfig(channels_last="yes")


# -- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@CUDA
def test_copies_to_cuda_go_through_pinned_memory() -> None:
    x = torch.rand(4, 3, 8, 8)
    out = to_device(x, torch.device("cuda"), channels_last=True)
    torch.cuda.synchronize()
    assert out.is_cuda and torch.equal(out.cpu(), x)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@CUDA
def test_a_seeded_cuda_grid_repeats_bit_for_bit(tmp_path: Path) -> None:
    base = {"datasets": ("digits",), "defenses": ("none", TRAINED),
            "attacks": ("pgd10",), "n": 100, "eps": (0.2,), "device": "cuda",
            "model_opts": QUICK, "fit_images": 200, "defense_opts": {"epochs": 1}}
    stores = [Store(tmp_path / f"{i}.sqlite") for i in range(2)]
    for i, store in enumerate(stores):
        run_grid(RunConfig(**base), store, Cache(tmp_path / f"cache{i}"))
    a, b = (s.frame().set_index("config_hash") for s in stores)
    assert sorted(a.index) == sorted(b.index)
    for h in a.index:
        assert (a.loc[h, "robust_correct"] == b.loc[h, "robust_correct"]).all()
        assert a.loc[h, "metadata"]["execution"]["deterministic"] is True


@pytest.mark.gpu
@CUDA
def test_bf16_on_cuda_and_a_real_out_of_memory_is_recovered() -> None:
    lin = nn.Linear(8, 8).cuda()
    with precision_scope(torch.device("cuda"), "bf16"):
        assert lin(torch.rand(2, 8, device="cuda")).dtype == torch.bfloat16
    free = torch.cuda.mem_get_info()[0]
    huge = int(free // (4 * 1024)) * 4  # a batch of 1024 floats per image: more than is free

    def step(b: int) -> None:
        torch.empty(b, 1024, device="cuda").normal_()

    out = probe_batch_size({"alloc": step}, [8, 16, huge], torch.device("cuda"), min_time=0)
    assert out["chosen"] in (8, 16) and out["probe"]["alloc"][-1].get("oom") is True


def test_the_command_line_sets_every_gpu_option() -> None:
    from bench.arguments import run_config as _run_config
    from bench.cli import build_parser

    args = build_parser().parse_args(
        ["run", "--attack", "fgsm", "--batch-size", "auto", "--train-precision", "bf16",
         "--attack-precision", "tf32", "--channels-last", "--no-deterministic"])
    cfg = _run_config(args)
    assert (cfg.batch_size, cfg.train_precision, cfg.attack_precision) == ("auto", "bf16", "tf32")
    assert cfg.channels_last is True and cfg.deterministic is False
    plain = _run_config(build_parser().parse_args(["run", "--attack", "fgsm"]))
    assert (plain.batch_size, plain.channels_last, plain.deterministic) == (250, False, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--attack", "fgsm", "--train-precision", "fp16"])
