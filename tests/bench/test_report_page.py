"""The HTML leaderboard page, on a synthetic store written through the real schema: its structure
checked in Python, then rendered by headless Chromium (screenshot and the DOM after its script)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.report.page as page_module
from bench.report import leaderboard, render
from bench.report.page import build_page, paper
from bench.store import CellResult, Store

EPS = 8 / 255
FLAG = {"code": "ZG", "title": "zero input gradients",
        "detail": "31 of 200 images (15.5%) have an all-zero input gradient"}
LEGEND = {"ZG": "Gradients vanish on many images: gradient attacks may fail for that reason "
                "alone.", "NM": "Robust accuracy does not fall as eps grows."}


def _cell(defense: str, attack: str, threat: str, robust: list[int], clean: list[int] | None = None,
          **fields: object) -> CellResult:
    n = len(robust)
    cell = CellResult(
        config_hash=f"{defense}-{attack}-{threat}", dataset="digits", split="test", n=n,
        model="cnn", defense=defense, defense_kind="preprocessor", attack=attack, threat=threat,
        norm="linf", eps=EPS, seed=0, clean_correct=np.array(clean or [1] * n, dtype=np.uint8),
        robust_correct=np.array(robust, dtype=np.uint8), wall_time=2.5, device="cpu",
        git_rev="abc1234", attack_params={"steps": 100}, versions={"torch": "2.3.1"})
    for key, value in fields.items():
        setattr(cell, key, value)
    return cell


def _png(width: int = 160, height: int = 60) -> bytes:
    """A real PNG (8-bit grey gradient) built by hand: signature, IHDR, IDAT, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(x * 255 // width for x in range(width)) for _ in range(height))
    header = struct.pack(">2I5B", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.fixture
def frame(tmp_path: Path) -> pd.DataFrame:
    """The baseline, a BPDA defense (jpeg), an EOT defense (randomization), a suite cell on a
    trained defense (dunet) and a defense no longer registered."""
    store = Store(tmp_path / "bench.sqlite")
    suite = {"suite": {"members": [{"label": "apgd-ce"}, {"label": "square"}],
                       "first_break": [1, 2, None, None]}}
    cells = [
        _cell("none", "pgd100", "whitebox", [0, 0, 0, 1]),
        _cell("jpeg", "pgd100", "whitebox", [1, 0, 1, 1], bpda=True,
              defense_params={"quality": 75, "note": "<b>x</b>"}),
        _cell("jpeg", "fgsm", "oblivious", [1, 1, 1, 1], defense_params={"quality": 75,
                                                                          "note": "<b>x</b>"}),
        _cell("randomization", "pgd100", "whitebox", [1, 1, 0, 1], config={"eot": 20},
              metadata={"eot": 20, "scaled": "paper 299->331 px scaled to 28->31"}),
        _cell("dunet", "adaptive", "whitebox", [0, 0, 1, 1], metadata={
            **suite, "fit": {"epochs": 2, "scaled_from_paper": "2 epochs, not 20-30"}}),
        _cell("retired-def", "fgsm", "oblivious", [1, 0, 1, 1], clean=[1, 1, 1, 0]),
    ]
    for c in cells:
        store.add(c)
    return store.frame()


@pytest.fixture
def flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wide table with flags as the flags module attaches them (``attrs["flags"]`` and
    ``attrs["flag_legend"]``)."""
    def with_flags(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
        wide = leaderboard(df, baseline)
        wide.attrs.update(flags={"digits/cnn/jpeg": [FLAG]}, flag_legend=LEGEND)
        return wide
    monkeypatch.setattr(page_module, "leaderboard", with_flags)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    out = tmp_path / "site"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "amplification.png").write_bytes(_png())
    (out / "plots" / "broken.png").write_bytes(b"not a png")
    return out


def _section(page: str, table_id: str) -> str:
    return re.search(rf'<table id="{table_id}".*?</table>', page, re.S).group(0)


def _headers(table: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table)]


@pytest.mark.usefixtures("flagged")
def test_page_structure(frame: pd.DataFrame, site: Path) -> None:
    page = Path(render(frame, "html", out_dir=site, baseline="none")).read_text(encoding="utf-8")
    board = _section(page, "board")
    heads = _headers(board)
    assert heads[:6] == ["dataset", "model", "defense", "worst case@8/255", "attacks@8/255",
                         "flags"]
    assert heads.index("worst case@8/255") < heads.index("fgsm/oblivious@8/255")
    assert '<th class="headline"' in board and '<td data-v="0.75" class="headline">' in board
    # the flag, with its detail as a tooltip, and the legend of flags and marks
    assert f'title="zero input gradients: {FLAG["detail"]}">ZG</span>' in board
    assert LEGEND["ZG"] in page and "NM</span>" in page and "(not raised)" in page
    assert "75.0†" in board and "75.0‡" in board and 'title="EOT over 20 draws"' in board
    assert "BPDA: the defense" in page and "EOT: the attack" in page
    assert _headers(_section(page, "breakdown"))[-1] == "broken first by (images)"
    assert "adaptive/whitebox@8/255:apgd-ce 1" in page
    # one detail view per row: paper, parameters (escaped), scaled, provenance, its cells
    details = re.findall(r'<details class="defense" id="row-\d+">.*?</details>', page, re.S)
    assert len(details) == len(leaderboard(frame)) == 5
    jpeg = next(d for d in details if "digits/cnn/jpeg</b>" in d)
    assert "JPEG compression round trip" in jpeg and '<a href="https://arxiv.org/abs/' in jpeg
    assert "<code>quality=75</code>" in jpeg and "&lt;b&gt;x&lt;/b&gt;" in jpeg
    assert "<b>x</b>" not in page and "zero input gradients: 31 of 200" in jpeg
    assert "git abc1234" in jpeg and "<code>torch=2.3.1</code>" in jpeg
    assert "paper 299-&gt;331 px" in next(d for d in details if "randomization</b>" in d)
    dunet = next(d for d in details if "dunet</b>" in d)
    assert "2 epochs, not 20-30" in dunet and "apgd-ce, square" in dunet
    assert "not a registered defense now" in next(d for d in details if "retired-def" in d)
    # the plot embedded (the file that is not a PNG skipped), every cell, the sort script
    assert f'src="data:image/png;base64,{base64.b64encode(_png()).decode()}"' in page
    assert "broken.png" not in page
    assert re.search(r"<summary>6 cells, one line each", page)
    assert "<script>" in page and "sortable-ready" in page
    assert not re.search(r'(src|href)="(?!data:|#|https://arxiv)|<link|@import|fetch\(', page)


def test_page_with_the_real_flags(frame: pd.DataFrame) -> None:
    wide = leaderboard(frame, "none")
    page = build_page(frame, "none")
    assert "flags" in _headers(_section(page, "board"))
    for code in wide.attrs.get("flag_legend", {}):
        assert f">{code}</span>" in page


def test_page_without_flags_and_plots(frame: pd.DataFrame,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide table without ``flags`` attrs (as before the flags existed) renders without them."""
    def without(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
        wide = leaderboard(df, baseline)
        for key in ("flags", "flag_legend"):
            wide.attrs.pop(key, None)
        return wide
    monkeypatch.setattr(page_module, "leaderboard", without)
    page = build_page(frame, "none")
    assert "flags" not in _headers(_section(page, "board"))
    assert 'class="flag' not in page and "<h2 id=\"plots\">" not in page
    assert 'href="#plots"' not in page  # the contents name only the sections shown


def test_paper_of_a_registered_and_an_unknown_defense() -> None:
    summary, cite = paper("at-pgd")
    assert summary.startswith("Madry et al.") and cite.startswith("Paper: Madry")
    assert cite.endswith("(https://arxiv.org/abs/1706.06083).")
    assert paper("no-such-defense") == ("", "")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def _browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--hide-scrollbars", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.slow
@pytest.mark.usefixtures("flagged")
def test_page_in_a_browser(frame: pd.DataFrame, site: Path, tmp_path: Path) -> None:
    path = Path(render(frame, "html", out_dir=site, baseline="none"))
    heads = _headers(_section(path.read_text(encoding="utf-8"), "board"))
    col = heads.index("worst case@8/255")
    dom = _browse(f"{path.as_uri()}?sort=board:{col}:desc", tmp_path / "p1", "--dump-dom").stdout
    board = _section(dom, "board")
    assert re.search(r'<table id="board" class="[^"]*\bsortable-ready\b', board)
    shown = [float(v) for v in re.findall(r'<td data-v="([^"]+)" class="headline">', board)]
    assert shown == sorted(shown, reverse=True) and len(shown) == 5
    assert 'aria-sort="descending"' in board
    shot = tmp_path / "leaderboard.png"
    _browse(f"{path.as_uri()}?open=all", tmp_path / "p2", f"--screenshot={shot}",
            "--window-size=1400,2000")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
