"""The content-addressed weight and tensor cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bench.cache
from bench.cache import FORMAT_VERSION, Cache, _atomic_write, stable_hash, tensors_digest
from bench.errors import AttackValidationError, CheckpointError

KEY = {"model": "cnn", "dataset": "digits", "recipe": {"epochs": 1, "lr": 1e-3}, "seed": 0}


def _net(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3), torch.nn.BatchNorm2d(width))


def test_stable_hash_is_independent_of_key_order() -> None:
    a = {"x": 1, "y": {"b": [1, 2], "a": "s"}}
    b = {"y": {"a": "s", "b": [1, 2]}, "x": 1}
    assert stable_hash(a) == stable_hash(b)
    assert stable_hash(a) != stable_hash({**a, "x": 2})
    assert stable_hash({"l": [1, 2]}) != stable_hash({"l": [2, 1]})  # list order matters
    assert stable_hash({"t": (1, 2)}) == stable_hash({"t": [1, 2]})  # JSON has one sequence type
    assert len(stable_hash(a)) == 16 and len(stable_hash(a, length=8)) == 8
    assert all(c in "0123456789abcdef" for c in stable_hash(a))


def test_stable_hash_is_stable_across_runs() -> None:
    # A literal value: changing the hashing scheme silently orphans every user's cache.
    assert stable_hash({"b": 1, "a": [1, "x"]}) == stable_hash({"a": [1, "x"], "b": 1})
    assert stable_hash({}) == "44136fa355b3678a"


def test_default_root_is_the_configured_cache_dir() -> None:
    assert Cache().root == Path(os.environ["BENCH_CACHE_DIR"]).resolve()


def test_path_is_under_kind_and_sanitizes_the_name(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    p = cache.path("classifiers", "imagenet-timm:inception_v3", KEY)
    assert p.parent == tmp_path / "classifiers"
    assert p.name == f"imagenet-timm_inception_v3-{stable_hash(KEY)}.safetensors"
    assert cache.path("classifiers", "x", {**KEY, "seed": 1}) != cache.path("classifiers", "x", KEY)


def test_tensors_round_trip_with_metadata(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert cache.load_tensors("sets", "a", KEY) is None
    x = torch.arange(12.0).view(3, 4)[:, ::2]  # non-contiguous on purpose
    path = cache.save_tensors({"x": x}, "sets", "a", KEY, meta={"acc": 0.5})
    tensors, meta = cache.load_tensors("sets", "a", KEY)  # type: ignore[misc]
    assert torch.equal(tensors["x"], x) and meta == {"acc": 0.5}
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"] == KEY and sidecar["key_hash"] == stable_hash(KEY)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.with_suffix(".json").name])  # no temporary files left behind


def test_memo_tensors_computes_once(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls = []

    def make() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x": torch.ones(2)}

    first = cache.memo_tensors("sets", "m", KEY, make)
    second = cache.memo_tensors("sets", "m", KEY, make)
    assert len(calls) == 1 and torch.equal(first["x"], second["x"])


def test_module_round_trip(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    net = _net()
    assert cache.load_module(_net(), "defenses", "d", KEY) is None
    net[1].running_mean.fill_(0.25)  # buffers are saved too
    cache.save_module(net, "defenses", "d", KEY, meta={"loss": 1.0})
    other = _net()
    assert cache.load_module(other, "defenses", "d", KEY) == {"loss": 1.0}
    for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    _atomic_write(target, lambda p: p.write_bytes(b"old"))

    def crash(p: Path) -> None:
        p.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_interrupted_save_is_a_cache_miss_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path)

    def crash(tensors: dict, filename: str) -> None:
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.cache, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.save_module(_net(), "defenses", "d", KEY)
    assert cache.load_module(_net(), "defenses", "d", KEY) is None
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "defenses").iterdir())


def _one_line_naming(err: pytest.ExceptionInfo[CheckpointError], path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


@pytest.mark.parametrize("content", [b"garbage", b""], ids=["garbage", "empty"])
def test_corrupt_weights_raise_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    cache = Cache(tmp_path)
    path = cache.save_module(_net(), "defenses", "d", KEY)
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(), "defenses", "d", KEY)
    assert "Delete it" in _one_line_naming(err, path)


def test_truncated_weights_raise_checkpoint_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    path = cache.save_module(_net(64), "defenses", "d", KEY)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(64), "defenses", "d", KEY)
    _one_line_naming(err, path)


def test_sidecar_for_another_key_raises_checkpoint_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    path = cache.save_module(_net(), "defenses", "d", KEY)
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "key_hash": "0" * 16}))
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(), "defenses", "d", KEY)
    assert "different configuration" in _one_line_naming(err, path)


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_missing_or_corrupt_sidecar_raises_checkpoint_error(tmp_path: Path, damage: str) -> None:
    cache = Cache(tmp_path)
    path = cache.save_module(_net(), "defenses", "d", KEY)
    side = path.with_suffix(".json")
    if damage == "delete":
        side.unlink()
    else:
        side.write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(), "defenses", "d", KEY)
    assert str(side) in _one_line_naming(err, path)


def test_state_dict_that_does_not_fit_raises_checkpoint_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    path = cache.save_module(_net(), "defenses", "d", KEY)
    wrong = {"0.weight": torch.zeros(8, 1, 3, 3)}  # wrong shape, keys missing
    save_file(wrong, str(path))
    _reseal(path, wrong)  # as if another version of the code had written it
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(), "defenses", "d", KEY)
    assert "do not fit" in _one_line_naming(err, path)


def _reseal(path: Path, tensors: dict[str, torch.Tensor], **meta_changes: object) -> None:
    """Rewrite ``path``'s sidecar so that its digest matches ``tensors`` (and changed metadata):
    an entry written consistently by other code."""
    side = path.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    sidecar["meta"].update(meta_changes)
    sidecar["digest"] = tensors_digest(tensors, sidecar["meta"])
    side.write_text(json.dumps(sidecar))


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    net = _net()
    path = cache.save_module(net, "defenses", "d", KEY, meta={"test_acc": 0.5})
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["0.weight"][0, 0, 0, 0] += 1.0  # same shapes: it would load without the digest
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(), "defenses", "d", KEY)
    assert "altered" in _one_line_naming(err, path)


def test_altered_metadata_is_refused(tmp_path: Path) -> None:
    """A recorded number (e.g. a test accuracy a result row copies) edited in the sidecar."""
    cache = Cache(tmp_path)
    path = cache.save_module(_net(), "defenses", "d", KEY, meta={"test_acc": 0.5})
    side = path.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    sidecar["meta"]["test_acc"] = 0.99
    side.write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError) as err:
        cache.load_module(_net(), "defenses", "d", KEY)
    assert "altered" in _one_line_naming(err, path)


def test_an_entry_of_the_older_format_is_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    path = cache.save_module(_net(), "defenses", "d", KEY, meta={"a": 1})
    side = path.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    del sidecar["digest"]
    side.write_text(json.dumps({**sidecar, "format": FORMAT_VERSION - 1}))
    assert cache.load_module(_net(), "defenses", "d", KEY) is None


def _reject_negative(tensors: dict[str, torch.Tensor]) -> None:
    if (tensors["x"] < 0).any():
        raise AttackValidationError("negative values")


def test_memo_recomputes_an_altered_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    cache = Cache(tmp_path)
    cache.memo_tensors("sets", "m", KEY, lambda: {"x": torch.ones(3)})
    path = cache.path("sets", "m", KEY)
    save_file({"x": torch.full((3,), 2.0)}, str(path))  # digest no longer matches
    again = cache.memo_tensors("sets", "m", KEY, lambda: {"x": torch.ones(3)})
    assert torch.equal(again["x"], torch.ones(3))
    assert str(path) in caplog.text and "recomputing" in caplog.text
    assert torch.equal(cache.load_tensors("sets", "m", KEY)[0]["x"], torch.ones(3))  # rewritten


def test_memo_validates_what_it_reads_back(tmp_path: Path) -> None:
    """Even a consistently sealed entry is validated before it is used."""
    cache = Cache(tmp_path)
    cache.memo_tensors("sets", "m", KEY, lambda: {"x": torch.ones(3)}, _reject_negative)
    path = cache.path("sets", "m", KEY)
    bad = {"x": -torch.ones(3)}
    save_file(bad, str(path))
    _reseal(path, bad)
    calls = []

    def make() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x": torch.ones(3)}

    out = cache.memo_tensors("sets", "m", KEY, make, _reject_negative)
    assert calls == [1] and torch.equal(out["x"], torch.ones(3))
    with pytest.raises(AttackValidationError):  # what make() returns is validated too
        cache.memo_tensors("sets", "other", KEY, lambda: bad, _reject_negative)
    assert not cache.path("sets", "other", KEY).exists()


def test_memo_json_is_made_once_per_key_and_again_when_unreadable(tmp_path: Path) -> None:
    cache, made = Cache(tmp_path), []

    def make() -> dict[str, int]:
        made.append(1)
        return {"chosen": len(made)}

    first = cache.memo_json("batch-size", "digits-cnn", {"device": "a"}, make)
    assert first == {"chosen": 1, "key": {"device": "a"}}
    assert cache.memo_json("batch-size", "digits-cnn", {"device": "a"}, make) == first
    assert cache.memo_json("batch-size", "digits-cnn", {"device": "b"}, make)["chosen"] == 2
    path = cache.path("batch-size", "digits-cnn", {"device": "a"}).with_suffix(".json")
    path.write_text("{not json")
    assert cache.memo_json("batch-size", "digits-cnn", {"device": "a"}, make)["chosen"] == 3
    assert json.loads(path.read_text())["chosen"] == 3
