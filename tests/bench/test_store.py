"""The result store: which cells are already stored, asked of many hashes at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.store import LOOKUP_CHUNK, CellResult, Store


def _cell(h: str) -> CellResult:
    ones = np.ones(2, dtype=np.uint8)
    return CellResult(config_hash=h, dataset="digits", split="test", n=2, model="cnn",
                      defense="none", defense_kind="preprocessor", attack="fgsm",
                      threat="oblivious", norm="linf", eps=0.1, seed=0, clean_correct=ones,
                      robust_correct=ones, wall_time=0.1, device="cpu", git_rev="abc")


def test_done_answers_for_more_hashes_than_one_query_binds(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    stored = [f"h{i}" for i in range(0, 3 * LOOKUP_CHUNK, 7)]
    for h in stored:
        store.add(_cell(h))
    asked = [f"h{i}" for i in range(3 * LOOKUP_CHUNK + 5)] + ["h0", "other"]
    assert store.done(asked) == set(stored)
    assert store.done(iter(["h7", "h8"])) == {"h7"} and store.done([]) == set()
