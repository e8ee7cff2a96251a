"""On-disk image sets (bench.stream) and the session's streamed slice: read per batch, verified,
and giving the same store as the slice held in memory."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from bench.cache import Cache
from bench.config import RunConfig
from bench.errors import CheckpointError
from bench.executors import run_grid
from bench.session import Session
from bench.store import Store
from bench.stream import DiskTensor, DiskWriter, Rows, digest, take


def written(folder: Path, x: torch.Tensor, batch: int = 7, shard: int = 5) -> DiskTensor:
    w = DiskWriter(folder, shard_rows=shard)
    for i in range(0, len(x), batch):
        w.write(x[i:i + batch])
    return w.finish({"note": "kept"})


def test_rows_read_back_exactly_across_shards_in_any_order(tmp_path: Path) -> None:
    x = torch.rand(23, 2, 3, 4)
    d = written(tmp_path / "set", x)
    assert len(d) == 23 and d.shape == (23, 2, 3, 4) and d.extra == {"note": "kept"}
    for idx in (torch.arange(23), torch.tensor([22, 0, 4, 5, 6, 11]), torch.arange(3, 9),
                torch.tensor([], dtype=torch.long)):
        assert torch.equal(d[idx], x[idx])
    assert torch.equal(d[2:17], x[2:17])
    assert len(list((tmp_path / "set").glob("shard-*"))) == 5  # ceil(23 / 5)
    assert digest(d) == digest(x)
    sub = take(d, torch.tensor([20, 3, 9]))
    assert isinstance(sub, Rows) and len(sub) == 3
    assert torch.equal(sub[torch.tensor([2, 0])], x[torch.tensor([9, 20])])
    assert torch.equal(take(x, torch.tensor([1])), x[1:2])  # in memory stays a tensor


def test_a_damaged_set_is_an_error_naming_it_and_an_interrupted_write_no_set(
        tmp_path: Path) -> None:
    x = torch.rand(12, 3)
    d = written(tmp_path / "set", x)
    shard = tmp_path / "set" / "shard-000001.f32"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"set.*shard 1 was altered.*delete the folder"):
        DiskTensor(tmp_path / "set", verify=True)
    shard.write_bytes(bytes(data[:8]))
    with pytest.raises(CheckpointError, match="truncated"):
        d[torch.arange(5, 10)]
    w = DiskWriter(tmp_path / "half")
    w.write(x)
    w.abort()
    assert not (tmp_path / "half").exists() and not list(tmp_path.glob("half.*"))
    (tmp_path / "nometa").mkdir()
    with pytest.raises(CheckpointError, match="unreadable"):
        DiskTensor(tmp_path / "nometa")


def per_sample(db: Path) -> dict[str, tuple[bytes, bytes, str]]:
    rows = sqlite3.connect(db).execute(
        "SELECT config_hash, clean_correct, robust_correct, config FROM results")
    return {h: (bytes(c), bytes(r), cfg) for h, c, r, cfg in rows.fetchall()}


@pytest.mark.slow
def test_a_streamed_slice_gives_the_store_of_one_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell's hash, configuration and per-sample flags: oblivious sets read back from the
    cache on disk, whitebox sets on survivors, an adaptive suite (lazy survivor rows)."""
    cfg = RunConfig(datasets=("digits",), defenses=("none", "bitdepth"),
                    attacks=("fgsm", "pgd10", "adaptive"), n=90, batch_size=40,
                    model_opts={"epochs": 1}, attack_opts={"steps": 3, "n_queries": 20})
    run_grid(cfg, Store(tmp_path / "memory.sqlite"), Cache(tmp_path / "c1"))
    monkeypatch.setenv("BENCH_STREAM_BYTES", "1")
    s = Session("digits", n=90, batch_size=40, cache=Cache(tmp_path / "c2"),
                model_opts={"epochs": 1})
    assert isinstance(s.test[0], DiskTensor)
    assert s.slice_id == Session("digits", n=90).slice_id  # the same slice, the same identity
    run_grid(cfg, Store(tmp_path / "disk.sqlite"), Cache(tmp_path / "c2"))
    assert per_sample(tmp_path / "disk.sqlite") == per_sample(tmp_path / "memory.sqlite")
    sets = list((tmp_path / "c2" / "adversarial").glob("*.d"))
    assert len(sets) == 3 and all((d / "meta.json").exists() for d in sets)  # + transfer APGD
    assert not list((tmp_path / "c2" / "tmp").iterdir())  # scratch sets removed
    # A damaged cached set is recomputed (and says so), never read into a result.
    damaged = next(d for d in sets if d.name.startswith("digits-cnn-"))  # on the classifier
    shard = next(damaged.glob("shard-*"))
    shard.write_bytes(b"\0" * shard.stat().st_size)
    again = Session("digits", n=90, batch_size=40, cache=Cache(tmp_path / "c2"),
                    model_opts={"epochs": 1})
    name = json.loads((damaged / "meta.json").read_text())["extra"]["key"]["attack"]
    x_adv = again.oblivious(name, again.info.default_eps)
    assert isinstance(x_adv, DiskTensor)
    fresh = Session("digits", n=90, batch_size=40, cache=Cache(tmp_path / "c1"),
                    model_opts={"epochs": 1}).oblivious(name, again.info.default_eps)
    assert torch.equal(x_adv[torch.arange(90)], fresh[torch.arange(90)])


def test_a_set_written_twice_keeps_one_copy_and_a_damaged_one_is_replaced(
        tmp_path: Path) -> None:
    """Two workers writing the same set: the second finds the first's and keeps it (a reader of
    the first never sees its files vanish); a damaged set is replaced."""
    x = torch.rand(9, 4)
    first = written(tmp_path / "set", x)
    shard = tmp_path / "set" / "shard-000000.f32"
    inode = shard.stat().st_ino
    second = written(tmp_path / "set", x)
    assert shard.stat().st_ino == inode and torch.equal(second[torch.arange(9)], x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    other = written(tmp_path / "set", x + 0)  # same bytes again
    assert other.digest == first.digest
    other_bytes = written(tmp_path / "set", torch.rand(9, 4))  # different content replaces
    assert other_bytes.digest != first.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    # A damaged copy under the same digest (its meta intact) is replaced, never kept.
    shard.write_bytes(b"\0" * shard.stat().st_size)
    again = written(tmp_path / "set", x)
    assert torch.equal(again[torch.arange(9)], x)
    again.verify()
